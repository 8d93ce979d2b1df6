"""The Redis backends against a real redis-server: a rate limit shared by replicas, shared
Retry-After pauses, fallback to a local share while Redis is down, and the shared dedup store.

Needs the `redis_server` plugin: `pytest -p tests.plugins.redis_server` (or `pytest_plugins`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.core.ratelimit import RateLimitConfig
from service.delivery.dedup import RedisDedupStore
from service.delivery.ratelimit import RedisRateLimiter, partition_share
from service.delivery.redis_config import RedisConfig, redis_client
from service.metrics import Metrics
from tests.plugins.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

Clients = Callable[[], redis.asyncio.Redis]


@pytest.fixture
async def clients(redis_clean: RedisServer) -> AsyncIterator[Clients]:
    """Make fresh clients of the test's Redis (one per simulated replica); closed afterwards."""
    made: list[redis.asyncio.Redis] = []

    def make() -> redis.asyncio.Redis:
        made.append(redis_client(RedisConfig(url=redis_clean.url, timeout_s=0.5)))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def acquisitions(
    limiters: list[RedisRateLimiter], vendor: str, duration_s: float, workers: int = 4
) -> list[float]:
    """Loop-time instants of every acquire that completed within `duration_s`, all workers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    times: list[float] = []

    async def worker(limiter: RedisRateLimiter) -> None:
        while True:
            await limiter.acquire(vendor)
            now = loop.time()
            if now > deadline:
                return
            times.append(now)

    await asyncio.gather(*(worker(lim) for lim in limiters for _ in range(workers)))
    return sorted(times)


def max_in_any_window(times: list[float], window_s: float) -> int:
    """The most instants that fall in any interval of `window_s`."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


async def test_two_replicas_together_stay_within_one_shared_limit(clients: Clients) -> None:
    """Two limiters on one Redis admit R/s combined (within 5%, plus the burst), not 2·R/s."""
    per_s, burst, duration_s = 50.0, 5, 2.5
    limits = {"v": RateLimitConfig(per_s=per_s, burst=burst)}
    replicas = [RedisRateLimiter(clients(), limits, replicas=2) for _ in range(2)]
    times = await acquisitions(replicas, "v", duration_s)
    assert not any(r.fallback_active for r in replicas)
    assert per_s * duration_s * 0.9 <= len(times) <= per_s * duration_s * 1.05 + burst
    assert max_in_any_window(times, 1.0) <= per_s * 1.05 + burst


async def test_the_lua_script_is_the_pure_gcra(clients: Clients) -> None:
    """Through Redis, a burst of 3 at 10/s goes at once and the next ones wait 0.1 s more each."""
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    limiter = RedisRateLimiter(
        clients(), {"v": RateLimitConfig(per_s=10.0, burst=3)}, sleep=no_sleep
    )
    got = [await limiter.acquire("v") for _ in range(5)]
    assert got[:3] == [0.0, 0.0, 0.0]
    assert got[3:] == pytest.approx([0.1, 0.2], abs=0.02)
    assert await limiter.acquire("v", "other-account") == 0.0


async def test_a_retry_after_pause_set_by_one_replica_blocks_the_other(clients: Clients) -> None:
    """A pause written by replica A makes replica B wait it out, through Redis alone."""
    limits = {"v": RateLimitConfig(per_s=100.0)}
    a, b = RedisRateLimiter(clients(), limits), RedisRateLimiter(clients(), limits)
    await a.pause_until("v", time.time() + 1.0)
    assert 0.8 < await b.paused_for_s("v") <= 1.0
    assert await b.paused_for_s("other") == 0.0
    started = time.monotonic()
    waited_s = await b.acquire("v")
    assert time.monotonic() - started >= 0.9
    assert waited_s >= 0.9
    assert await b.paused_for_s("v") == 0.0


async def test_a_shorter_pause_never_shortens_the_shared_one(clients: Clients) -> None:
    """The pause key's expiry is only ever extended, whichever replica writes."""
    limits = {"v": RateLimitConfig(per_s=100.0)}
    a, b = RedisRateLimiter(clients(), limits), RedisRateLimiter(clients(), limits)
    await a.pause_until("v", time.time() + 2.0)
    await b.pause_until("v", time.time() + 0.2)
    assert await b.paused_for_s("v") > 1.5
    assert await clients().pttl("conversion-relay:pause:{v}") > 1500


async def test_redis_down_falls_back_to_a_local_share_and_comes_back_by_itself(
    redis_clean: RedisServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Redis a replica limits at per_s/replicas (gauge 1, logged once); then returns."""
    caplog.set_level(logging.INFO, logger="conversion_relay.ratelimit")
    metrics = Metrics(CollectorRegistry())
    gauge = metrics.ratelimit_fallback.labels("v")
    limiter = RedisRateLimiter(
        clients(),
        {"v": RateLimitConfig(per_s=40.0, burst=4)},
        replicas=2,
        reprobe_s=0.2,
        metrics=metrics,
    )
    await limiter.acquire("v")
    assert gauge._value.get() == 0

    redis_clean.stop()
    times = await acquisitions([limiter], "v", duration_s=1.0)
    assert limiter.fallback_active
    assert gauge._value.get() == 1
    assert 15 <= len(times) <= 20 * 1.05 + 2 + 1  # 20/s share, burst 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "redis unreachable" in warnings[0].getMessage()

    redis_clean.start()
    deadline = time.monotonic() + 3.0
    while limiter.fallback_active and time.monotonic() < deadline:
        await limiter.acquire("v")
        await asyncio.sleep(0.05)
    assert not limiter.fallback_active
    assert gauge._value.get() == 0
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_dedup_marks_are_shared_between_store_instances(clients: Clients) -> None:
    """A pair marked through one store is seen through another, under its prefixed key."""
    a, b = RedisDedupStore(clients(), ttl_s=60.0), RedisDedupStore(clients(), ttl_s=60.0)
    assert not await b.seen("altcraft", "e1")
    await a.mark("altcraft", "e1")
    assert await b.seen("altcraft", "e1")
    assert not await b.seen("conductrics", "e1")
    ttl_ms = await clients().pttl("conversion-relay:dedup:altcraft:e1")
    assert 59_000 < ttl_ms <= 60_000


async def test_dedup_marks_expire_after_the_ttl(clients: Clients) -> None:
    """A mark is gone once its TTL has passed."""
    store = RedisDedupStore(clients(), ttl_s=0.3)
    await store.mark("v", "e1")
    assert await store.seen("v", "e1")
    await asyncio.sleep(0.45)
    assert not await store.seen("v", "e1")


async def test_dedup_fails_open_while_redis_is_down(
    redis_clean: RedisServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Redis every event counts as new (delivered again), errors are counted and logged."""
    caplog.set_level(logging.INFO, logger="conversion_relay.dedup")
    errors: list[BaseException] = []
    store = RedisDedupStore(clients(), ttl_s=60.0, on_error=errors.append)
    await store.mark("v", "e1")
    redis_clean.stop()
    assert not await store.seen("v", "e1")
    await store.mark("v", "e2")
    assert store.errors == 2
    assert len(errors) == 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    redis_clean.start()
    for _ in range(3):  # the first command after a restart may still meet the dead connection
        await store.mark("v", "e3")
        if await store.seen("v", "e3"):
            break
    assert await store.seen("v", "e3")
    assert any("reachable again" in r.getMessage() for r in caplog.records)


class Group:
    """A consumer group's view for `partition_share`: N members over 12 partitions."""

    def __init__(self, members: int, index: int) -> None:
        self.members, self.index = members, index

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(12))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", p) for p in range(12) if p % self.members == self.index}


async def test_with_redis_down_the_fleet_share_follows_scaling_from_2_to_4_processes(
    redis_clean: RedisServer, clients: Clients
) -> None:
    """Redis down: 2 processes, then 4 (the group rebalanced), each limiting at its partition
    share; the fleet's total rate stays within 10 % of the limit, not 2× (per_s/replicas=2)."""
    per_s = 40.0
    limits = {"v": RateLimitConfig(per_s=per_s, burst=2)}
    redis_clean.stop()
    groups = [Group(2, i) for i in range(4)]
    fleet = [RedisRateLimiter(clients(), limits, replicas=2, reprobe_s=60) for _ in range(4)]
    for limiter, group in zip(fleet, groups, strict=True):
        limiter.set_share("v", partition_share(group, ["t"]))
    two = await acquisitions(fleet[:2], "v", duration_s=2.0, workers=2)
    for group in groups:
        group.members = 4
    await acquisitions(fleet, "v", duration_s=0.2, workers=2)  # new shares take effect
    four = await acquisitions(fleet, "v", duration_s=3.0, workers=2)
    assert all(limiter.fallback_active for limiter in fleet)
    rate_two, rate_four = len(two) / 2.0, len(four) / 3.0
    print(
        f"fleet rate with Redis down: 2 processes {rate_two:.1f}/s, 4 processes {rate_four:.1f}/s"
    )
    assert abs(rate_four - per_s) <= 0.1 * per_s + 2 / 3.0 * 4  # bursts of 1 per process
    assert abs(rate_two - per_s) <= 0.1 * per_s + 2 / 2.0 * 2


async def test_a_vendor_without_a_limit_never_touches_redis(clients: Clients) -> None:
    """acquire, pause_until and paused_for_s of an unlimited vendor make no Redis command."""
    client = clients()
    calls = 0
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    limiter = RedisRateLimiter(client, {"u": None})
    for _ in range(10):
        await limiter.acquire("u")
    await limiter.pause_until("u", time.time() + 0.05)
    assert await limiter.paused_for_s("u") > 0
    assert calls == 0
