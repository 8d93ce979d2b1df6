"""The Sender's layers, through the real Sender, with a fake transport and fake clocks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, ClassVar

import msgspec
import pytest

from service.core.breaker import BreakerState
from service.core.exchange import (
    DecisionKind,
    Outcome,
    OutcomeKind,
    VendorRequest,
    VendorResponse,
)
from service.core.retry import classify_status
from service.delivery.ratelimit import LocalRateLimiter
from service.delivery.sender import Attempts, Sender
from service.errors import DeliveryError, VendorTimeout
from service.events import ConversionEvent
from service.metrics import Metrics
from service.vendors.base import Route, VendorBase

REQUEST = VendorRequest("POST", "http://vendor.test/goal", {}, b"{}")


class Config(VendorBase, tag="fake", frozen=True, kw_only=True):
    """A vendor config for the fake adapter."""

    def goal_ids(self) -> Mapping[str, str]:
        """No goals."""
        return {}


class FakeAdapter:
    """Classifies by status alone (the default table)."""

    protocol: ClassVar[str] = "fake"

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """Never missing."""
        return None

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Always the same request."""
        return REQUEST

    def classify(self, response: VendorResponse) -> Outcome:
        """The default table."""
        return classify_status(response.status, response.headers)


class Clock:
    """A fake clock shared by the monotonic and wall readings."""

    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


class FakeTransport:
    """Answers from a script: a status and headers, or an error to raise."""

    def __init__(self, answers: list[tuple[int, dict[str, str]] | DeliveryError]) -> None:
        self.answers = answers
        self.sent = 0

    async def send(self, request: VendorRequest) -> VendorResponse:
        self.sent += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, DeliveryError):
            raise answer
        return VendorResponse(answer[0], answer[1], b"")


def make_sender(
    transport: FakeTransport, clock: Clock, **config: Any
) -> tuple[Sender, LocalRateLimiter]:
    vendor = msgspec.convert({"base_url": "http://vendor.test", **config}, Config)

    async def sleep(seconds: float) -> None:
        clock.now_s += seconds

    limiter = LocalRateLimiter({"v": vendor.rate_limit}, clock=clock, wall_clock=clock, sleep=sleep)
    sender = Sender(
        "v",
        FakeAdapter(),
        transport,
        vendor,
        Metrics(),
        limiter,
        rng=lambda: 0.5,
        clock=clock,
        monotonic=clock,
        sleep=sleep,
    )
    return sender, limiter


@pytest.mark.parametrize("value", ["²", "9" * 309, "soon, maybe", "Tue, 99 Foo 2026 25:61:00 GMT"])
async def test_an_unparseable_retry_after_is_ignored_with_a_note(value: str) -> None:
    """`²`, 309 digits or garbage: a retry with a note in the detail, never an exception."""
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(503, {"Retry-After": value})]), clock)
    decision = await sender.deliver(REQUEST, Attempts())
    assert decision.kind is DecisionKind.RETRY
    assert decision.outcome is not None
    assert decision.outcome.retry_after_s is None
    assert "Retry-After" in decision.outcome.detail and "ignored" in decision.outcome.detail


async def test_a_huge_retry_after_is_capped_and_never_dead_letters_the_record() -> None:
    """Retry-After: 1000000000 pauses the vendor max_retry_after_s, and the record waits."""
    clock = Clock()
    sender, limiter = make_sender(FakeTransport([(429, {"Retry-After": "1000000000"})]), clock)
    decision = await sender.deliver(REQUEST, Attempts())
    assert decision.kind is DecisionKind.RETRY
    assert decision.delay_s == pytest.approx(60.0)
    assert limiter.pause_left_s("v") == pytest.approx(60.0)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_of_zero_pauses_the_vendor_for_the_jittered_base_backoff(
    status: int,
) -> None:
    """Retry-After: 0 pauses every request for ½–1× initial_backoff_s, not for nothing."""
    clock = Clock()
    sender, limiter = make_sender(FakeTransport([(status, {"Retry-After": "0"})]), clock)
    decision = await sender.deliver(REQUEST, Attempts())
    assert decision.kind is DecisionKind.RETRY
    assert limiter.pause_left_s("v") == pytest.approx(0.2 * 0.75)  # rng 0.5: ¾ of the base
    assert decision.delay_s is not None and decision.delay_s >= limiter.pause_left_s("v")


async def test_a_retry_after_date_in_the_past_pauses_the_vendor_for_the_floor() -> None:
    """An HTTP-date Retry-After already past is the floor too."""
    clock = Clock()
    past = format_datetime(datetime.fromtimestamp(clock.now_s - 60, UTC), usegmt=True)
    sender, limiter = make_sender(FakeTransport([(429, {"Retry-After": past})]), clock)
    await sender.deliver(REQUEST, Attempts())
    assert limiter.pause_left_s("v") == pytest.approx(0.2 * 0.75)


async def test_a_vendor_that_keeps_throttling_is_paused_twice_as_long_each_time() -> None:
    """Throttle after throttle the pause doubles up to max_backoff_s; a delivered answer brings
    it back to the base, and none of it spends the record's retry budget."""
    clock = Clock()
    zero: tuple[int, dict[str, str]] = (429, {"Retry-After": "0"})
    transport = FakeTransport([zero] * 8 + [(200, {}), zero])
    sender, limiter = make_sender(transport, clock, retry={"max_backoff_s": 2.0})
    attempts, pauses = Attempts(), []
    for _ in range(8):
        decision = await sender.deliver(REQUEST, attempts)
        assert decision.kind is DecisionKind.RETRY
        pauses.append(limiter.pause_left_s("v"))
        clock.now_s += decision.delay_s
    assert pauses == pytest.approx([0.15, 0.3, 0.6, 1.2, 1.5, 1.5, 1.5, 1.5])
    assert (await sender.deliver(REQUEST, Attempts())).kind is DecisionKind.DELIVERED
    await sender.deliver(REQUEST, Attempts())
    assert limiter.pause_left_s("v") == pytest.approx(0.15)


async def test_vendor_wide_pauses_never_spend_the_records_retry_budget() -> None:
    """A record paused again and again by 503 + Retry-After for far longer than max_elapsed_s
    (and more often than max_attempts) is still retried, and then delivered."""
    clock = Clock()
    transport = FakeTransport([(503, {"Retry-After": "100"})] * 20 + [(200, {})])
    sender, _ = make_sender(
        transport, clock, retry={"max_elapsed_s": 60, "max_attempts": 3}, breaker={"enabled": False}
    )
    attempts = Attempts()
    for _ in range(20):
        decision = await sender.deliver(REQUEST, attempts)
        assert decision.kind is DecisionKind.RETRY
        clock.now_s += decision.delay_s
    assert (await sender.deliver(REQUEST, attempts)).kind is DecisionKind.DELIVERED


async def test_the_default_budget_is_time_and_keeps_a_30_percent_failing_vendors_events() -> None:
    """At the defaults a record failing 10 times in a row (0.3**10) is still retried; it is
    dead-lettered only after max_elapsed_s of failing."""
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(503, {})]), clock, breaker={"enabled": False})
    attempts = Attempts()
    tries = 0
    while (decision := await sender.deliver(REQUEST, attempts)).kind is DecisionKind.RETRY:
        tries += 1
        clock.now_s += decision.delay_s
    assert decision.dlq_reason == "retries_exhausted"
    assert tries >= 10
    assert clock.now_s - attempts.first_at_s >= 300 - 30  # within one backoff of the budget


async def test_a_429_is_throttling_and_never_opens_the_breaker() -> None:
    """A flood of 429s does not open the breaker (its Retry-After pause handles it)."""
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(429, {})]), clock)
    for _ in range(100):
        await sender.deliver(REQUEST, Attempts())
        clock.now_s += 0.01
    assert sender.breaker_state == "closed"


async def test_the_breaker_ignores_answers_of_requests_sent_before_it_opened() -> None:
    """Timeouts of requests that left before the breaker opened do not reopen it once a probe
    has half-opened it, and steady probes close it within seconds of the vendor's return."""
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(503, {})]), clock, breaker={"min_requests": 5})
    for _ in range(5):
        await sender.deliver(REQUEST, Attempts())
    assert sender.breaker is not None
    assert sender.breaker.state is BreakerState.OPEN
    stale_sent_at_s = clock.now_s - 10.0  # requests that left before it opened
    clock.now_s += 1.5
    assert sender.breaker.allow(clock.now_s)  # a probe, answered
    sender.breaker.record(True, clock.now_s, clock.now_s)
    assert sender.breaker.state is BreakerState.HALF_OPEN
    for _ in range(10):  # the stale timeouts land now
        sender.breaker.record(False, clock.now_s, stale_sent_at_s)
    assert sender.breaker.state is BreakerState.HALF_OPEN


async def test_after_any_outage_the_first_delivery_comes_within_3_s_at_the_defaults() -> None:
    """However long the outage, probes keep a steady ~1 s pace, so the first request after the
    vendor returns is at most ~1.2 s after it (the default probe interval, jittered)."""
    clock = Clock()
    down = [VendorTimeout("no answer")]
    transport = FakeTransport(list(down))
    sender, _ = make_sender(transport, clock)
    outage_s, back_at_s = 3600.0, clock.now_s + 3600.0
    delivered_at_s = None
    sent = 0

    async def one() -> None:
        nonlocal delivered_at_s
        transport.answers = [(200, {})] if clock.now_s >= back_at_s else list(down)
        decision = await sender.deliver(REQUEST, Attempts())
        if decision.kind is DecisionKind.DELIVERED and delivered_at_s is None:
            delivered_at_s = clock.now_s

    while delivered_at_s is None and sent < 100_000:
        await one()
        sent += 1
        if sender.sending_blocked():
            clock.now_s += 0.05
    assert delivered_at_s is not None
    assert delivered_at_s - back_at_s < 3.0, (outage_s, delivered_at_s - back_at_s)
    # while open: at most ~1 request per second
    assert transport.sent < outage_s * 1.3 + 100


async def test_breaker_open_and_close_are_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opening logs one warning, closing one (with the outage length and events that waited);
    steady failures in between log nothing more."""
    caplog.set_level(logging.INFO, logger="conversion_relay")
    clock = Clock()
    transport = FakeTransport([(503, {})])
    sender, _ = make_sender(transport, clock, breaker={"min_requests": 5})
    for _ in range(200):
        await sender.deliver(REQUEST, Attempts())
        clock.now_s += 0.1
    transport.answers = [(200, {})]
    for _ in range(20):
        await sender.deliver(REQUEST, Attempts())
        clock.now_s += 0.1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert "breaker open" in lines[0]
    assert "breaker closed after" in lines[1] and "events waited" in lines[1]


async def test_one_warning_per_retry_after_pause_start(caplog: pytest.LogCaptureFixture) -> None:
    """Many 429s inside one pause log one line; a pause after it ended logs another."""
    caplog.set_level(logging.INFO, logger="conversion_relay")
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(429, {"Retry-After": "5"})]), clock)
    await sender.deliver(REQUEST, Attempts())  # the first 429 starts a pause
    throttled = Outcome(kind=OutcomeKind.RETRY, status=429, retry_after_s=5.0)
    for _ in range(10):  # nine more 429s of requests in flight meanwhile, inside that pause
        await sender._pause.after(throttled, sent_at_s=clock.now_s - 0.01)
    clock.now_s += 6
    await sender.deliver(REQUEST, Attempts())  # after it ended: a new pause
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and all("paused" in line for line in lines), lines


async def test_a_redirect_is_never_delivered_and_names_the_location_host() -> None:
    """A 302 is rejected (the default) with the Location's host in the reason; never followed."""
    clock = Clock()
    transport = FakeTransport([(302, {"Location": "https://evil.example/steal?token=x"})])
    sender, _ = make_sender(transport, clock)
    decision = await sender.deliver(REQUEST, Attempts())
    assert decision.kind is DecisionKind.DEAD_LETTER
    assert decision.outcome is not None
    assert decision.outcome.reason == "redirect"
    assert "evil.example" in decision.outcome.detail and "token" not in decision.outcome.detail


async def test_a_status_override_cannot_make_a_redirect_delivered() -> None:
    """`status_actions: {302: delivered}` is refused by the config."""
    with pytest.raises(msgspec.ValidationError, match="redirect"):
        msgspec.convert({"base_url": "http://v.test", "status_actions": {302: "delivered"}}, Config)


async def test_the_rate_token_is_taken_inside_the_concurrency_gate() -> None:
    """With adaptive concurrency at 1, a second request waits at the gate before its token."""
    order: list[str] = []
    clock = Clock()
    sender, limiter = make_sender(
        FakeTransport([(200, {})]), clock, adaptive_concurrency=True, rate_limit={"per_s": 1000}
    )
    release = asyncio.Event()

    async def acquire(vendor: str, account: str = "") -> float:
        order.append(f"token {sender._gate.active}")
        return 0.0

    class Slow(FakeTransport):
        async def send(self, request: VendorRequest) -> VendorResponse:
            await release.wait()
            return await super().send(request)

    sender._transport = Slow([(200, {})])
    limiter.acquire = acquire  # type: ignore[method-assign]
    first = asyncio.create_task(sender.deliver(REQUEST, Attempts()))
    second = asyncio.create_task(sender.deliver(REQUEST, Attempts()))
    await asyncio.sleep(0.01)
    assert order == ["token 1"]  # the second is held at the gate, without a token
    release.set()
    await asyncio.gather(first, second)
    assert order == ["token 1", "token 1"]


async def test_adaptive_concurrency_rises_above_one_when_the_gate_is_full() -> None:
    """Fed the true in-flight count, the limit climbs while every slot is busy."""
    clock = Clock()
    sender, _ = make_sender(FakeTransport([(200, {})]), clock, adaptive_concurrency=True)

    class Busy(FakeTransport):
        async def send(self, request: VendorRequest) -> VendorResponse:
            clock.now_s += 0.01  # the controller's windows run on the fake clock
            await asyncio.sleep(0.002)  # a steady vendor: the same real RTT at any concurrency
            return await super().send(request)

    sender._transport = Busy([(200, {})])

    async def worker() -> None:
        for _ in range(30):
            await sender.deliver(REQUEST, Attempts())

    await asyncio.gather(*(worker() for _ in range(16)))
    assert sender.concurrency.limit > 4


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [
        ("goal_reach", {}),
        ("expertsender", {"api_key": "k"}),
        ("altcraft", {"token": "t", "db_id": 1, "pixel_id": 1}),
        ("conductrics", {"account": "acc", "api_key": "k"}),
        ("webhook", {}),
    ],
)
def test_no_vendor_protocol_accepts_a_redirect_as_delivered(
    protocol: str, extra: dict[str, object]
) -> None:
    """Every protocol's config refuses `status_actions: {302: delivered}`; the webhook's
    `status.delivered` list too."""
    from service.vendors import VendorConfig

    base = {"protocol": protocol, "base_url": "https://v.test", **extra}
    msgspec.convert(base, VendorConfig)  # the base config is valid
    with pytest.raises(msgspec.ValidationError, match="redirect"):
        msgspec.convert({**base, "status_actions": {302: "delivered"}}, VendorConfig)
    if protocol == "webhook":
        with pytest.raises(msgspec.ValidationError, match="redirect"):
            msgspec.convert({**base, "status": {"delivered": [301]}}, VendorConfig)


class _UnreadHeaders(Mapping[str, str]):
    """Headers that fail the test when read."""

    def __getitem__(self, name: str) -> str:
        raise AssertionError(f"a delivered answer's header {name!r} was read")

    def __iter__(self) -> Any:
        raise AssertionError("a delivered answer's headers were iterated")

    def __len__(self) -> int:
        return 1


def test_a_delivered_answers_headers_are_never_read() -> None:
    """Retry-After only matters for retries: a 2xx answer's headers stay undecoded (h1 decodes
    them lazily, ~1 µs per request saved)."""
    from service.core.retry import delivered_outcome
    from service.delivery.sender import bound_retry_after

    outcome = delivered_outcome(200)
    assert outcome is not None
    answer = VendorResponse(200, _UnreadHeaders(), b"")
    assert bound_retry_after(outcome, answer, 60.0) is outcome


class FreshErrorTransport:
    """Fails every request with a new transport error, as a real client does."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, request: VendorRequest) -> VendorResponse:
        self.sent += 1
        raise VendorTimeout("read timed out")


async def test_a_failed_try_leaves_no_reference_cycle_for_the_collector() -> None:
    """1,000 tries that fail in the transport leave no garbage cycle (frame <-> traceback) that
    would keep the request alive until the collector runs, outside max_in_flight_bytes."""
    import gc

    clock = Clock()
    transport = FreshErrorTransport()
    sender, _ = make_sender(transport, clock)  # type: ignore[arg-type]
    await sender.deliver(REQUEST, Attempts())  # warm: first-use caches are not per try
    gc.collect()
    gc.disable()
    try:
        for _ in range(1_000):
            decision = await sender.deliver(REQUEST, Attempts())
            assert decision.kind is DecisionKind.RETRY
        found = gc.collect()
    finally:
        gc.enable()
    assert transport.sent == 1_001
    assert found < 50, f"{found} objects in reference cycles after 1,000 failed tries"
