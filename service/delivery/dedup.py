"""Dedup stores: remember which (vendor, event_id) pairs were delivered, for `ttl_s`.

    DedupStore (protocol)       seen(vendor, event_id) / mark(vendor, event_id)
    ├── MemoryDedupStore        this process only: a bounded LRU with a TTL (clock passed in)
    └── RedisDedupStore         shared by every replica: `SET {prefix}dedup:{vendor}:{id} PX ttl`

A Redis error fails open: `seen` answers False (the event is delivered again, at-least-once,
never lost) and `mark` is skipped; each error is counted in `errors` (and passed to `on_error`)
and logged once per outage on the "conversion_relay.dedup" logger.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
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


class MemoryDedupStore:
    """A bounded LRU of (vendor, event_id) with a TTL; the least recently used go first."""

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
        self._expires_at: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires_at)

    def contains(self, vendor: str, event_id: str) -> bool:
        """Whether the pair is remembered and not expired (a hit counts as a use)."""
        key = (vendor, event_id)
        expires_at = self._expires_at.get(key)
        if expires_at is None:
            return False
        if expires_at <= self._clock():
            del self._expires_at[key]
            return False
        self._expires_at.move_to_end(key)
        return True

    def add(self, vendor: str, event_id: str) -> None:
        """Remember the pair for `ttl_s`, evicting expired and then least recently used entries."""
        now_s = self._clock()
        key = (vendor, event_id)
        self._expires_at[key] = now_s + self.ttl_s
        self._expires_at.move_to_end(key)
        while self._expires_at and next(iter(self._expires_at.values())) <= now_s:
            self._expires_at.popitem(last=False)
        while len(self._expires_at) > self.max_entries:
            self._expires_at.popitem(last=False)

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
