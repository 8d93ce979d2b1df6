"""Rate limiters (the I/O shell around `service.core.ratelimit`): wait for a vendor's slot, and
pause a whole vendor when it answers 429/503 with Retry-After.

    RateLimiter (protocol)
    ├── LocalRateLimiter   one token bucket per vendor (and account) in this process
    └── RedisRateLimiter   GCRA in one Lua script on Redis, shared by every replica;
                           falls back to a local bucket at this process' share of the limit
                           while Redis is unreachable, and returns to Redis by itself
                           (re-probed every `reprobe_s`)

The fallback share follows the live fleet: it is the share of the vendor's partitions this
process owns in its consumer group (`set_share`, `partition_share`), so scaling from 2 to 4
processes halves each one's share even while Redis is down; only before any assignment is
known does it use the configured `per_s / redis.replicas`. Vendors without a rate limit never
touch Redis (their Retry-After pauses stay local: each replica gets its own 429s anyway).

`acquire()` reserves the caller's slot and sleeps until it (one Redis round trip per request,
FIFO). A Retry-After pause is vendor-wide: every `acquire()` for that vendor waits it out,
and a slot whose time fell inside a pause is reserved again after it, so the queue does not
burst when the pause ends. With Redis the pause is a key with a PX expiry that the same script
checks, so one replica's 429 pauses them all. The end time stored is the one the sender computed,
floor included (`service.core.retry.ThrottleBackoff`: never shorter than the jittered base
backoff), so a `Retry-After: 0` pauses every replica, not only the one it answered.

Keys: `{prefix}ratelimit:{vendor}[:account]` (GCRA theoretical arrival time, expires when idle)
and `{prefix}pause:{vendor}`; the `{vendor}` hash tag keeps both in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from service.core.ratelimit import RateLimitConfig, TokenBucket
from service.delivery.redis_config import RedisConfig
from service.metrics import Metrics

__all__ = [
    "REDIS_ERRORS",
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "Share",
    "fraction_of",
    "partition_share",
]

log = logging.getLogger("conversion_relay.ratelimit")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# What "Redis cannot serve us" looks like: unreachable or slow (ConnectionError, TimeoutError),
# and also any error reply (OOM, READONLY replica, BUSY script): every one of these switches the
# limiter to its local fallback and the dedup store to fail-open, rather than failing delivery.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

# service.core.ratelimit.gcra(), line for line, on Redis' clock, behind the vendor's pause key.
# KEYS[1] GCRA state, KEYS[2] pause; ARGV[1] emission interval s (0 = unlimited), ARGV[2] burst,
# ARGV[3] max wait s (negative = unbounded: reserve). Returns {allowed, wait µs, paused}.
GCRA_LUA = """
redis.replicate_commands()
local pause_ms = redis.call('PTTL', KEYS[2])
if pause_ms > 0 then
  return {0, pause_ms * 1000, 1}
end
local interval = tonumber(ARGV[1])
if interval <= 0 then
  return {1, 0, 0}
end
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now)
local wait = start - now - (burst - 1) * interval
if wait <= 1e-9 then
  wait = 0
end
if max_wait >= 0 and wait > max_wait then
  return {0, math.ceil(wait * 1000000), 0}
end
local new_tat = start + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat),
           'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, math.ceil(wait * 1000000), 0}
"""

# Extend (never shorten) a vendor's pause. KEYS[1] pause; ARGV[1] ms. Returns 1 if extended.
PAUSE_LUA = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) >= ms then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return 1
"""


# This process' share (0..1] of a vendor's fleet, None while unknown.
Share = Callable[[], float | None]


class RateLimiter(Protocol):
    """Waits for a vendor's rate limit and honours vendor-wide Retry-After pauses."""

    async def acquire(self, vendor: str, account: str = "") -> float:
        """Wait until a request to `vendor` (for `account`) may go; return the seconds waited."""
        ...

    async def pause_until(self, vendor: str, until_epoch_s: float) -> None:
        """Hold every request to `vendor` until the given epoch time (extends, never shortens)."""
        ...

    async def paused_for_s(self, vendor: str) -> float:
        """Seconds the vendor stays paused (0.0 when it is not)."""
        ...

    def pause_left_s(self, vendor: str) -> float:
        """Seconds left of the pause this process knows of (no I/O)."""
        ...

    def limited(self, vendor: str) -> bool:
        """Whether `vendor` has a rate limit (else `acquire` only ever waits out a pause)."""
        ...

    def set_share(self, vendor: str, share: Share) -> None:
        """Tell the limiter which share of the fleet this process is for `vendor`."""
        ...


def partition_share(consumer: Any, topics: list[str]) -> Share:
    """The share of `topics`' partitions `consumer` owns in its group (None while unknown)."""

    def share() -> float | None:
        total = 0
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            total += len(partitions) if partitions else 0
        owned = sum(1 for tp in consumer.assignment() if tp.topic in topics)
        return owned / total if total and owned else None

    return share


def fraction_of(config: RateLimitConfig, share: float) -> RateLimitConfig:
    """`share` (0..1] of a limit: per_s · share, and the burst too (at least 1)."""
    share = min(1.0, max(share, 1e-6))
    return RateLimitConfig(
        per_s=config.per_s * share, burst=max(1, int(config.burst_requests * share))
    )


class LocalRateLimiter:
    """Token buckets in this process: one per (vendor, account); vendors without a limit pass."""

    def __init__(
        self,
        limits: Mapping[str, RateLimitConfig | None],
        *,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._limits = dict(limits)
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._paused_until: dict[str, float] = {}  # vendor → monotonic time

    async def acquire(self, vendor: str, account: str = "") -> float:
        """Reserve the next slot and sleep until it, sitting out any pause; return the wait."""
        waited_s = await self._wait(vendor, account)
        if self._metrics is not None and waited_s > 0:
            self._metrics.ratelimit_wait_seconds.labels(vendor).inc(waited_s)
        return waited_s

    async def pause_until(self, vendor: str, until_epoch_s: float) -> None:
        """Hold every request to `vendor` until the given epoch time (extends, never shortens)."""
        self.pause_local(vendor, until_epoch_s)

    async def paused_for_s(self, vendor: str) -> float:
        """Seconds the vendor stays paused (0.0 when it is not)."""
        return self.pause_left_s(vendor)

    def set_share(self, vendor: str, share: Share) -> None:
        """Nothing to share without Redis: each process limits alone."""

    def limited(self, vendor: str) -> bool:
        """Whether `vendor` has a rate limit."""
        return self._limits.get(vendor) is not None

    def pause_local(self, vendor: str, until_epoch_s: float, count: bool = True) -> bool:
        """Record a pause in this process; True if it extended the current one."""
        until_s = self._clock() + (until_epoch_s - self._wall_clock())
        if until_s <= self._paused_until.get(vendor, -math.inf) or until_s <= self._clock():
            return False
        started = self.pause_left_s(vendor) == 0.0  # the counter counts pauses, not extensions
        self._paused_until[vendor] = until_s
        if count and started and self._metrics is not None:
            self._metrics.retry_after_pauses.labels(vendor).inc()
        return True

    def pause_left_s(self, vendor: str) -> float:
        """Seconds left of this process' pause of `vendor`."""
        return max(0.0, self._paused_until.get(vendor, -math.inf) - self._clock())

    async def _wait(self, vendor: str, account: str) -> float:
        waited_s = 0.0
        while True:
            pause_s = self.pause_left_s(vendor)
            if pause_s > 0:
                await self._sleep(pause_s)
                waited_s += pause_s
                continue
            bucket = self._bucket(vendor, account)
            wait_s = bucket.reserve() if bucket is not None else 0.0
            if wait_s > 0:
                await self._sleep(wait_s)
                waited_s += wait_s
            if self.pause_left_s(vendor) == 0.0:  # else the slot fell in a pause: take another
                return waited_s

    def _bucket(self, vendor: str, account: str) -> TokenBucket | None:
        bucket = self._buckets.get((vendor, account))
        if bucket is None:
            config = self._limits.get(vendor)
            if config is None:
                return None
            bucket = self._buckets[vendor, account] = TokenBucket.from_config(config, self._clock)
        return bucket


class RedisRateLimiter:
    """GCRA on Redis shared by every replica; a local share of the limit while Redis is down."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        limits: Mapping[str, RateLimitConfig | None],
        *,
        replicas: int = 1,
        key_prefix: str = "conversion-relay:",
        reprobe_s: float = 2.0,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._limits = dict(limits)
        self._prefix = key_prefix
        self._reprobe_s = reprobe_s
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._client = client
        self._gcra = client.register_script(GCRA_LUA)
        self._pause = client.register_script(PAUSE_LUA)
        self._replicas = max(1, replicas)
        self._shares: dict[str, Share] = {}
        # (vendor, account) → (the share it was built for, the fallback bucket)
        self._fallback_buckets: dict[tuple[str, str], tuple[float, TokenBucket]] = {}
        # Pauses are always recorded here too, so this replica honours them even without Redis;
        # it also limits the vendors that have no limit (no bucket: only their pauses).
        self.local = LocalRateLimiter(
            {}, metrics=metrics, clock=clock, wall_clock=wall_clock, sleep=sleep
        )
        self._fallback = False
        self._next_probe_s = -math.inf
        self._set_fallback_gauge(0)

    @classmethod
    def from_config(
        cls,
        client: redis.asyncio.Redis,
        limits: Mapping[str, RateLimitConfig | None],
        config: RedisConfig,
        metrics: Metrics | None = None,
    ) -> RedisRateLimiter:
        """A limiter with the replica count, key prefix and re-probe interval of `config`."""
        return cls(
            client,
            limits,
            replicas=config.replicas,
            key_prefix=config.key_prefix,
            reprobe_s=config.reprobe_s,
            metrics=metrics,
        )

    @property
    def fallback_active(self) -> bool:
        """True while Redis is unreachable and this replica limits alone."""
        return self._fallback

    def set_share(self, vendor: str, share: Share) -> None:
        """Where this process' share of `vendor`'s fleet comes from (used while Redis is down)."""
        self._shares[vendor] = share

    def limited(self, vendor: str) -> bool:
        """Whether `vendor` has a rate limit (shared over Redis)."""
        return self._limits.get(vendor) is not None

    def share_of(self, vendor: str) -> float:
        """This process' share of `vendor`'s limit while Redis is down."""
        provider = self._shares.get(vendor)
        share = provider() if provider is not None else None
        return share if share is not None and share > 0 else 1.0 / self._replicas

    def pause_left_s(self, vendor: str) -> float:
        """Seconds left of the pause this process knows of (its own or one Redis reported)."""
        return self.local.pause_left_s(vendor)

    async def acquire(self, vendor: str, account: str = "") -> float:
        """Reserve the next shared slot and sleep until it, sitting out any pause."""
        if self._limits.get(vendor) is None:
            return await self.local.acquire(vendor, account)  # no limit: no Redis round trip
        waited_s = shared_waited_s = 0.0  # the local limiter counts its own waits
        while True:
            wait_s = self.local.pause_left_s(vendor)
            paused = wait_s > 0
            if not paused:
                if not self._try_redis():
                    waited_s += await self._fallback_acquire(vendor, account)
                    break
                try:
                    wait_s, paused = await self._reserve(vendor, account)
                except REDIS_ERRORS as exc:
                    self._enter_fallback(exc)
                    continue
                self._leave_fallback()
                if paused:  # another replica's pause: hold this process' requests too
                    self.local.pause_local(vendor, self._wall_clock() + wait_s, count=False)
            if wait_s > 0:
                await self._sleep(wait_s)
                shared_waited_s += wait_s
            # A slot that fell inside a pause (set meanwhile by any replica) is taken again.
            if not paused and (wait_s == 0 or await self.paused_for_s(vendor) == 0):
                break
        if self._metrics is not None and shared_waited_s > 0:
            self._metrics.ratelimit_wait_seconds.labels(vendor).inc(shared_waited_s)
        return waited_s + shared_waited_s

    async def _fallback_acquire(self, vendor: str, account: str) -> float:
        """A local bucket at this process' current share of the limit (Redis is down)."""
        config = self._limits.get(vendor)
        if config is None:
            return 0.0
        share = self.share_of(vendor)
        known = self._fallback_buckets.get((vendor, account))
        if known is None or abs(known[0] - share) > 0.01 * share:
            bucket = TokenBucket.from_config(fraction_of(config, share), self._clock)
            self._fallback_buckets[vendor, account] = (share, bucket)
        else:
            bucket = known[1]
        wait_s = bucket.reserve()
        if wait_s > 0:
            await self._sleep(wait_s)
            if self._metrics is not None:
                self._metrics.ratelimit_wait_seconds.labels(vendor).inc(wait_s)
        return wait_s

    async def pause_until(self, vendor: str, until_epoch_s: float) -> None:
        """Pause `vendor` here and, through Redis, on every replica (extends, never shortens)."""
        self.local.pause_local(vendor, until_epoch_s)
        pause_ms = math.ceil((until_epoch_s - self._wall_clock()) * 1000)
        if self._limits.get(vendor) is None:
            return  # a vendor without a limit never touches Redis
        if pause_ms <= 0 or not self._try_redis():
            return
        try:
            await self._pause(keys=[self._pause_key(vendor)], args=[pause_ms])
        except REDIS_ERRORS as exc:
            self._enter_fallback(exc)
        else:
            self._leave_fallback()

    async def paused_for_s(self, vendor: str) -> float:
        """Seconds the vendor stays paused, here or by any replica (0.0 when it is not)."""
        local_s = self.local.pause_left_s(vendor)
        if self._limits.get(vendor) is None or not self._try_redis():
            return local_s
        try:
            pttl_ms = int(await self._client.pttl(self._pause_key(vendor)))
        except REDIS_ERRORS as exc:
            self._enter_fallback(exc)
            return local_s
        self._leave_fallback()
        return max(local_s, pttl_ms / 1000 if pttl_ms > 0 else 0.0)

    async def _reserve(self, vendor: str, account: str) -> tuple[float, bool]:
        config = self._limits.get(vendor)
        interval_s = config.emission_interval_s if config else 0.0
        burst = config.burst_requests if config else 1
        keys = [self._bucket_key(vendor, account), self._pause_key(vendor)]
        result = await self._gcra(keys=keys, args=[repr(interval_s), burst, -1])
        _allowed, wait_us, paused = (int(x) for x in result)
        return wait_us / 1_000_000, bool(paused)

    def _bucket_key(self, vendor: str, account: str) -> str:
        suffix = f":{account}" if account else ""
        return f"{self._prefix}ratelimit:{{{vendor}}}{suffix}"

    def _pause_key(self, vendor: str) -> str:
        return f"{self._prefix}pause:{{{vendor}}}"

    def _try_redis(self) -> bool:
        """Whether to ask Redis now: always when healthy; once per `reprobe_s` while down."""
        if not self._fallback:
            return True
        now_s = self._clock()
        if now_s < self._next_probe_s:
            return False
        self._next_probe_s = now_s + self._reprobe_s
        return True

    def _enter_fallback(self, exc: BaseException) -> None:
        self._next_probe_s = self._clock() + self._reprobe_s
        if self._fallback:
            return
        self._fallback = True
        self._set_fallback_gauge(1)
        log.warning(
            "redis unreachable (%s: %s); limiting locally at this process' share of the fleet, "
            "re-probing every %gs",
            type(exc).__name__,
            exc,
            self._reprobe_s,
        )

    def _leave_fallback(self) -> None:
        if not self._fallback:
            return
        self._fallback = False
        self._set_fallback_gauge(0)
        log.info("redis reachable again; rate limits are shared across replicas again")

    def _set_fallback_gauge(self, value: int) -> None:
        if self._metrics is not None:
            for vendor, limit in self._limits.items():
                # a vendor without a limit never uses Redis, so it is never on a fallback
                self._metrics.ratelimit_fallback.labels(vendor).set(value if limit else 0)
