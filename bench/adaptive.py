"""Bench scenario `adaptive`: adaptive (AIMD) concurrency vs the best fixed concurrency against a
vendor that serves at most K requests at once and queues the rest (sandbox `max_concurrent`).

The real `Sender` stack (breaker, pause, gate, rate token, aiohttp transport, classify, retry)
sends to a sandbox over loopback; no Kafka is involved, so the figure is the sender's alone.
For each fixed concurrency and for adaptive (ceiling = the largest fixed one) it reports the
delivered requests per second and the vendor's peak queue. Goal: adaptive ≥ 90 % of the best
fixed throughput, with less queueing at the vendor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import ClassVar

import msgspec
from aiohttp import web

from bench.report import Section, num
from service.core.exchange import DecisionKind, Outcome, VendorRequest, VendorResponse
from service.core.retry import classify_status
from service.delivery.ratelimit import LocalRateLimiter
from service.delivery.sender import Attempts, Sender
from service.delivery.transport import AiohttpTransport, new_session
from service.events import ConversionEvent
from service.metrics import Metrics
from service.sandbox.base import Accepted, Sandbox
from service.vendors.base import Route, VendorBase

__all__ = ["adaptive_section"]


class _Config(VendorBase, tag="bench_plain", frozen=True, kw_only=True):
    """A vendor config for the plain adapter."""

    def goal_ids(self) -> Mapping[str, str]:
        """No goals."""
        return {}


class _Plain:
    """Classifies by status alone."""

    protocol: ClassVar[str] = "bench_plain"

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """Never missing."""
        return None

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Not used: the bench sends one prepared request."""
        raise NotImplementedError

    def classify(self, response: VendorResponse) -> Outcome:
        """The default table."""
        return classify_status(response.status, response.headers)


class _AcceptAll:
    name = "bench_plain"

    def check(self, request: web.Request, body: bytes) -> Accepted:
        """Accept every request."""
        return Accepted(web.Response(status=200, text="ok"), None)

    def rejection(self) -> web.StreamResponse:
        """Not used."""
        return web.Response(status=400)


async def _run_one(
    k: int, latency_s: float, concurrency: int, adaptive: bool, duration_s: float
) -> tuple[float, int, int]:
    """(delivered/s, vendor's peak queue, final limit) of one configuration."""
    sandbox = Sandbox(_AcceptAll())
    sandbox.faults.max_concurrent, sandbox.faults.latency_s = k, latency_s
    await sandbox.start()
    config = msgspec.convert(
        {
            "base_url": sandbox.base_url,
            "concurrency": concurrency,
            "adaptive_concurrency": adaptive,
        },
        _Config,
    )
    session = new_session(config)
    sender = Sender(
        "bench",
        _Plain(),
        AiohttpTransport("bench", session),
        config,
        Metrics(),
        LocalRateLimiter({}),
    )
    request = VendorRequest("POST", f"{sandbox.base_url}/goal", {}, b"{}")
    delivered = 0
    deadline_s = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal delivered
        while time.monotonic() < deadline_s:
            decision = await sender.deliver(request, Attempts())
            delivered += decision.kind is DecisionKind.DELIVERED

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await session.close()
        await sandbox.stop()
    return delivered / duration_s, sandbox.peak_queued, sender.concurrency.limit


async def adaptive_section(quick: bool) -> Section:
    """The `adaptive` scenario's report section."""
    k, latency_s = 8, 0.02
    duration_s = 2.0 if quick else 15.0
    fixed_levels = (4, 8, 16) if quick else (2, 4, 8, 12, 16, 32)
    ceiling = max(fixed_levels)
    section = Section(
        f"Adaptive vs fixed concurrency (vendor serves {k} at once, "
        f"{latency_s * 1000:.0f} ms each)",
        ["concurrency", "delivered/s", "vendor peak queue", "final limit"],
    )
    results: list[tuple[str, float, int, int]] = []
    for level in fixed_levels:
        rate, queue, limit = await _run_one(k, latency_s, level, False, duration_s)
        results.append((f"fixed {level}", rate, queue, limit))
    rate, queue, limit = await _run_one(k, latency_s, ceiling, True, duration_s)
    results.append((f"adaptive (max {ceiling})", rate, queue, limit))
    for name, rate, queue, limit in results:
        section.rows.append([name, num(rate), str(queue), str(limit)])
    best = max(results[:-1], key=lambda r: r[1])
    share = rate / best[1] if best[1] else 0.0
    section.notes.append(
        f"adaptive delivered {share:.0%} of the best fixed ({best[0]}); goal ≥ 90 %, with a "
        f"smaller vendor queue than fixed {ceiling}. {duration_s:g} s per configuration."
    )
    return section
