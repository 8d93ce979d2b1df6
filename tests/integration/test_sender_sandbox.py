"""The composed Sender stack against real sandboxes over real HTTP, on each transport."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest
from aiohttp import web

from service.core.exchange import DecisionKind, Outcome, VendorRequest, VendorResponse
from service.core.retry import classify_status
from service.delivery.ratelimit import LocalRateLimiter
from service.delivery.sender import Attempts, Sender
from service.delivery.transport import Transport
from service.events import ConversionEvent
from service.metrics import Metrics
from service.sandbox.base import Accepted, Sandbox
from service.vendors.base import Route
from tests.transports import TRANSPORTS, plain_vendor, transport_for


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    """The transport under test: every test here runs on each."""
    return str(request.param)


class PlainAdapter:
    """Classifies by status alone."""

    protocol: ClassVar[str] = "plain"

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """Never missing."""
        return None

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Not used."""
        raise NotImplementedError

    def classify(self, response: VendorResponse) -> Outcome:
        """The default table."""
        return classify_status(response.status, response.headers)


class AcceptAll:
    """A contract that accepts every request with 200, or a custom answer."""

    name = "plain"

    def __init__(self, answer: web.StreamResponse | None = None) -> None:
        self.answer = answer

    def check(self, request: web.Request, body: bytes) -> Accepted:
        """Accept."""
        return Accepted(self.answer or web.Response(status=200, text="ok"), None)

    def rejection(self) -> web.StreamResponse:
        """Not used."""
        return web.Response(status=400)


async def sender_for(sandbox: Sandbox, kind: str, **config: Any) -> tuple[Sender, Transport]:
    vendor = plain_vendor(sandbox.base_url, **config)
    transport = transport_for(kind, sandbox.base_url, **config)
    sender = Sender("v", PlainAdapter(), transport, vendor, Metrics(), LocalRateLimiter({}))
    return sender, transport


def request_to(sandbox: Sandbox) -> VendorRequest:
    return VendorRequest("POST", f"{sandbox.base_url}/goal", {}, b"{}")


async def test_adaptive_concurrency_climbs_to_what_the_vendor_serves_and_backs_off(
    sandbox_factory: Any, kind: str
) -> None:
    """Against a vendor serving at most K=6 at once (the rest queue), the limit climbs from 1
    to about K; it never stays far above K, where queueing shows as a jump in latency."""
    k = 6
    sandbox = await sandbox_factory(AcceptAll())
    sandbox.faults.max_concurrent, sandbox.faults.latency_s = k, 0.02
    sender, transport = await sender_for(sandbox, kind, concurrency=32, adaptive_concurrency=True)
    limits: list[int] = []
    request = request_to(sandbox)
    deadline_s = time.monotonic() + 6.0

    async def worker() -> None:
        while time.monotonic() < deadline_s:
            decision = await sender.deliver(request, Attempts())
            assert decision.kind is DecisionKind.DELIVERED
            limits.append(sender.concurrency.limit)

    try:
        await asyncio.gather(*(worker() for _ in range(32)))
    finally:
        await transport.aclose()
    late = limits[len(limits) // 2 :]
    print(f"limit peak {max(limits)}, late mean {sum(late) / len(late):.1f}, K {k}")
    assert max(limits) >= k - 1
    assert sum(late) / len(late) <= 2.5 * k


async def test_a_redirect_is_not_followed(sandbox_factory: Any, kind: str) -> None:
    """A 307 to another host is answered as a redirect (rejected), and nothing goes there."""
    target = await sandbox_factory(AcceptAll())
    answer = web.Response(status=307, headers={"Location": f"{target.base_url}/steal"})
    sandbox = await sandbox_factory(AcceptAll(answer))
    sender, transport = await sender_for(sandbox, kind)
    try:
        decision = await sender.deliver(request_to(sandbox), Attempts())
    finally:
        await transport.aclose()
    assert decision.kind is DecisionKind.DEAD_LETTER
    assert decision.outcome is not None and decision.outcome.reason == "redirect"
    assert "127.0.0.1" in decision.outcome.detail
    assert target.accepted == []


async def test_an_oversized_answer_is_an_error_not_read_whole(
    sandbox_factory: Any, kind: str
) -> None:
    """A 2xx with a 1 MiB body is cut off at 64 KiB and retried as an error, not delivered."""
    sandbox = await sandbox_factory(AcceptAll(web.Response(status=200, body=b"x" * 2**20)))
    sender, transport = await sender_for(sandbox, kind, breaker={"enabled": False})
    try:
        decision = await sender.deliver(request_to(sandbox), Attempts())
    finally:
        await transport.aclose()
    assert decision.kind is DecisionKind.RETRY
    assert decision.outcome is not None and "limit" in decision.outcome.detail


async def test_after_an_outage_the_first_delivery_comes_within_3_s(
    sandbox_factory: Any, kind: str
) -> None:
    """At the defaults, 10 s down: the breaker opens, probes ~1/s, and the first delivery after
    the vendor is back comes within 3 s (events waiting meanwhile)."""
    sandbox = await sandbox_factory(AcceptAll())
    sender, transport = await sender_for(sandbox, kind)
    request = request_to(sandbox)
    stop = asyncio.Event()

    async def worker() -> None:
        attempts = Attempts()
        while not stop.is_set():
            decision = await sender.deliver(request, attempts)
            if decision.kind is DecisionKind.RETRY:
                await asyncio.sleep(min(decision.delay_s, 0.5))
            else:
                attempts = Attempts()
                await asyncio.sleep(0.1)  # a modest steady flow before the outage

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    try:
        await asyncio.sleep(0.5)
        await sandbox.go_down()
        await asyncio.sleep(10.0)
        assert sender.breaker_state == "open"
        sandbox.accepted.clear()
        await sandbox.go_up()
        up_s = time.time()
        for _ in range(200):  # up to 10 s
            if sandbox.accepted:
                break
            await asyncio.sleep(0.05)
        assert sandbox.accepted, "nothing delivered 10 s after the vendor came back"
        print(f"first delivery {sandbox.accepted[0].at_s - up_s:.2f}s after up")
        assert sandbox.accepted[0].at_s - up_s < 3.0
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await transport.aclose()
