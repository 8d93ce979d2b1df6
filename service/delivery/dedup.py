"""Dedup stores: remember which (vendor, event_id) pairs were delivered, for `ttl_s`.

    DedupStore (protocol)       seen(vendor, event_id) / mark(vendor, event_id)
    ├── MemoryDedupStore        this process only: 16 generations over the TTL (clock passed in)
    └── RedisDedupStore         shared by every replica: `SET {prefix}dedup:{vendor}:{id} PX ttl`

A Redis error fails open: `seen` answers False (the event is delivered again, at-least-once,
never lost) and `mark` is skipped; each error is counted in `errors` (and passed to `on_error`)
and logged once per outage on the "conversion_relay.dedup" logger.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import redis.asyncio

from service.delivery.ratelimit import REDIS_ERRORS
from service.delivery.redis_config import SEVEN_DAYS_S, DedupConfig

__all__ = ["DedupStore", "MemoryDedupStore", "RedisDedupStore", "make_dedup_store"]

log = logging.getLogger("conversion_relay.dedup")


class DedupStore(Protocol):
    """Which events a vendor already has."""

    async def seen(self, vendor: str, event_id: str) -> bool:
        """Whether `event_id` was marked delivered to `vendor` within the TTL."""
        ...

    async def mark(self, vendor: str, event_id: str) -> None:
        """Remember that `event_id` was delivered to `vendor`."""
        ...


class _Generation:
    """The pairs marked while one generation was the newest: event ids per vendor."""

    __slots__ = ("ids", "marks", "opened_s")

    def __init__(self, opened_s: float) -> None:
        self.opened_s = opened_s
        self.ids: dict[str, list[str]] = {}
        self.marks = 0


class MemoryDedupStore:
    """(vendor, event_id) pairs remembered in `GENERATIONS` generations, forgotten a generation
    at a time: a pair is remembered for between 15/16 of `ttl_s` and `ttl_s`, and at
    `max_entries` the oldest generation (1/16 of the pairs) goes.

    An LRU with a per-pair expiry held a tuple key, a float and ordering links per pair
    (~250 bytes) and touched a dozen scattered objects per mark; here a pair is a slot in its
    vendor's dict and in its generation's list (~125 bytes with its UUID), a check is one
    lookup and a mark one insert and one append.
    """

    GENERATIONS = 16

    def __init__(
        self,
        ttl_s: float = SEVEN_DAYS_S,
        max_entries: int = 150_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._slots = min(self.GENERATIONS, max_entries)
        self._per_generation = max_entries // self._slots
        self._span_s = ttl_s / self._slots
        # vendor → event_id → the list of the generation that marked it last
        self._seen: dict[str, dict[str, list[str]]] = {}
        self._generations: deque[_Generation] = deque([_Generation(clock())])
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _age(self, now_s: float) -> None:
        """Forget generations opened a TTL ago; open a new one every `ttl_s / 16`."""
        generations = self._generations
        if now_s - generations[-1].opened_s >= self._span_s:
            self._open(now_s)
        while generations[0].opened_s <= now_s - self.ttl_s:
            self._forget(generations.popleft())
            if not generations:
                generations.append(_Generation(now_s))

    def _open(self, now_s: float) -> None:
        if len(self._generations) >= self._slots:
            self._forget(self._generations.popleft())
        self._generations.append(_Generation(now_s))

    def _forget(self, generation: _Generation) -> None:
        for vendor, ids in generation.ids.items():
            seen = self._seen[vendor]
            for event_id in ids:
                if seen.get(event_id) is ids:  # not marked again in a later generation
                    del seen[event_id]
                    self._count -= 1

    def contains(self, vendor: str, event_id: str) -> bool:
        """Whether the pair is remembered (marked within the TTL and not forgotten at capacity)."""
        self._age(self._clock())
        seen = self._seen.get(vendor)
        return seen is not None and event_id in seen

    def add(self, vendor: str, event_id: str) -> None:
        """Remember the pair (again) from now on."""
        now_s = self._clock()
        self._age(now_s)
        newest = self._generations[-1]
        if newest.marks >= self._per_generation:
            self._open(now_s)
            newest = self._generations[-1]
        ids = newest.ids.get(vendor)
        if ids is None:
            ids = newest.ids[vendor] = []
        seen = self._seen.get(vendor)
        if seen is None:
            seen = self._seen[vendor] = {}
        if seen.get(event_id) is None:
            self._count += 1
        seen[event_id] = ids
        ids.append(event_id)
        newest.marks += 1

    async def seen(self, vendor: str, event_id: str) -> bool:
        """Whether `event_id` was marked delivered to `vendor` within the TTL."""
        return self.contains(vendor, event_id)

    async def mark(self, vendor: str, event_id: str) -> None:
        """Remember that `event_id` was delivered to `vendor`."""
        self.add(vendor, event_id)


class RedisDedupStore:
    """Delivered pairs as Redis keys with an expiry, shared by every replica; fails open."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        ttl_s: float = SEVEN_DAYS_S,
        key_prefix: str = "conversion-relay:",
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._client = client
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._prefix = f"{key_prefix}dedup:"
        self._on_error = on_error
        self.errors = 0
        self._failing = False

    def key(self, vendor: str, event_id: str) -> str:
        """The Redis key of a pair."""
        return f"{self._prefix}{vendor}:{event_id}"

    async def seen(self, vendor: str, event_id: str) -> bool:
        """Whether the pair is marked; False (deliver again) when Redis cannot be asked."""
        try:
            found = int(await self._client.exists(self.key(vendor, event_id)))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self._recovered()
        return found > 0

    async def mark(self, vendor: str, event_id: str) -> None:
        """Mark the pair for the TTL; skipped (counted, logged) when Redis cannot be reached."""
        try:
            await self._client.set(self.key(vendor, event_id), b"1", px=self._ttl_ms)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return
        self._recovered()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(exc)
        if not self._failing:
            self._failing = True
            log.warning(
                "dedup store unreachable (%s: %s); delivering without dedup until it is back",
                type(exc).__name__,
                exc,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("dedup store reachable again")


def make_dedup_store(
    config: DedupConfig,
    client: redis.asyncio.Redis | None = None,
    key_prefix: str = "conversion-relay:",
    on_error: Callable[[BaseException], None] | None = None,
) -> DedupStore | None:
    """The store `config` asks for (None when dedup is disabled); redis needs a client."""
    if not config.enabled:
        return None
    if config.backend == "memory":
        return MemoryDedupStore(config.ttl_s, config.max_entries)
    if client is None:
        raise ValueError("dedup.backend is redis but no redis is configured")
    return RedisDedupStore(client, config.ttl_s, key_prefix, on_error)
