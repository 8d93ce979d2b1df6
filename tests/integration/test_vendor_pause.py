"""Vendor-wide Retry-After pauses through the paths users run: a relay on the real broker and a
strict sandbox, and the pause shared by replicas over a real redis-server.

A pause lasts the vendor's Retry-After but never less than a floor (½–1× the base backoff,
doubling while the vendor keeps throttling): `Retry-After: 0` must not become a busy loop.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest

from service.core.exchange import DecisionKind
from service.core.ratelimit import RateLimitConfig
from service.core.retry import RetryConfig, pause_floor_s
from service.delivery.ratelimit import RedisRateLimiter
from service.delivery.redis_config import RedisConfig, redis_client
from service.delivery.sender import Attempts, Sender
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from service.metrics import Metrics
from tests.conftest import goal_reach_vendor, relay_config, wait_for
from tests.integration.test_sender_sandbox import PlainAdapter, request_to
from tests.plugins.redis_server import RedisServer
from tests.transports import plain_vendor, transport_for

pytestmark = pytest.mark.timeout(60)

WINDOW_S = 2.0


def rounds_within(window_s: float, config: RetryConfig) -> int:
    """The most sending rounds that fit in `window_s`: the first, then one after each pause,
    every pause at least the lowest draw of its floor (throttles in a row doubling it)."""
    rounds, elapsed_s = 1, 0.0
    while True:
        elapsed_s += pause_floor_s(rounds, config.initial_backoff_s, config.max_backoff_s, _lowest)
        if elapsed_s >= window_s:
            return rounds
        rounds += 1


def _vendor_events(lines: list[bytes]) -> Counter[str]:
    events = [orjson.loads(line) for line in lines]
    return Counter(
        e["customer"]["ids"]["sustain_impact"]
        for e in events
        if e["goal"] in ("purchase", "signup") and "sustain_impact" in e["customer"]["ids"]
    )


@pytest.mark.parametrize("retry_after", ["0", "an HTTP date in the past"])
async def test_a_vendor_answering_retry_after_zero_is_paused_not_spun_and_then_delivered(
    broker, topics, sandbox_factory, run_relay, retry_after: str
) -> None:
    """A vendor answering every request 429 with `Retry-After: 0` (or a date already past) gets
    each event at most once per round for 2 s at the default retry policy (a round after each
    floored pause), and every event exactly once after it recovers."""
    si = await sandbox_factory()
    if retry_after == "0":
        si.faults.retry_after_s = 0  # what `fault sustain_impact throttle 0` sets
    else:
        past = datetime.now(UTC) - timedelta(hours=1)
        si.faults.retry_after = format_datetime(past, usegmt=True)
    vendor = goal_reach_vendor(si, retry={})  # the defaults, not the fixture's fast backoff
    await run_relay(relay_config(broker, topics, {"sustain_impact": vendor}))
    lines = list(sample_lines(12))
    want = _vendor_events(lines)
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: si.statuses.get(429, 0) > 0, 30, "the first 429")
    first_s = min(si.request_times_s)
    await wait_for(lambda: time.time() > first_s + WINDOW_S, 10, "the throttled window")
    in_window = sum(1 for t in si.request_times_s if t <= first_s + WINDOW_S)
    bound = sum(want.values()) * rounds_within(WINDOW_S, RetryConfig())
    assert in_window <= bound, f"{in_window} requests in {WINDOW_S}s (bound {bound})"
    si.faults.retry_after_s = si.faults.retry_after = None
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 40, "every delivery")
    assert Counter(p["CustomerId"] for p in si.payloads()) == want


async def test_a_retry_after_zero_on_one_replica_pauses_the_other_through_redis(
    sandbox_factory, redis_clean: RedisServer
) -> None:
    """A `Retry-After: 0` answer to replica A holds replica B for the floor too: the floored
    pause is what the shared pause key stores."""
    si = await sandbox_factory()
    si.faults.retry_after_s = 0
    limits = {"v": RateLimitConfig(per_s=1000)}
    clients = [redis_client(RedisConfig(url=redis_clean.url, timeout_s=0.5)) for _ in range(2)]
    a, b = (RedisRateLimiter(client, limits) for client in clients)
    config = plain_vendor(si.base_url, rate_limit={"per_s": 1000})
    transport = transport_for("h1", si.base_url)
    try:
        sender = Sender("v", PlainAdapter(), transport, config, Metrics(), a)
        decision = await sender.deliver(request_to(si), Attempts())
        assert decision.kind is DecisionKind.RETRY
        retry = config.retry
        lowest_floor_s = pause_floor_s(1, retry.initial_backoff_s, retry.max_backoff_s, _lowest)
        assert await b.paused_for_s("v") >= lowest_floor_s - 0.02  # B never saw the 429
    finally:
        await transport.aclose()
        for client in clients:
            await client.aclose()


def _lowest() -> float:
    """The lowest jitter draw."""
    return 0.0
