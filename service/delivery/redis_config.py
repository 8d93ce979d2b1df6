"""Config of the optional Redis (shared rate limit, dedup store) and of the dedup store, and the
one place a Redis client is made from it. Every key, default and meaning is in
docs/reference/config.md, generated from these Structs and their field comments.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["DedupConfig", "RedisConfig", "redis_client"]

SEVEN_DAYS_S = 7 * 24 * 3600.0


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where Redis is, how many replicas share its limits, and how patient to be with it."""

    # `redis://[:password@]host:port/db`, `rediss://` for TLS, or `unix://`; give it as `${ENV}`.
    url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")]
    # Replicas sharing the limits: while Redis is down each takes `per_s / replicas`.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    # Prefix of every key the relay writes.
    key_prefix: str = "conversion-relay:"
    # Per command; a slower Redis counts as down.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    # While Redis is down, how often the limiter tries it again (2 s: back on the shared limit
    # within 5 s of Redis returning, the fleet drill's bound, for one command per probe).
    reprobe_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0


class DedupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where delivered (vendor, event_id) pairs are remembered, and for how long."""

    # Off: every event is sent even if it was delivered before.
    enabled: bool = True
    # `memory`: per process, bounded by max_entries, lost on restart; `redis`: shared,
    # survives restarts (needs `redis:`).
    backend: Literal["memory", "redis"] = "memory"
    # How long a delivered (vendor, event_id) is remembered (default 7 days; the memory
    # backend forgets in 16 steps, so a pair is remembered for 15/16 of this at least).
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = SEVEN_DAYS_S
    # Memory backend only: how many pairs are remembered; past it the oldest 1/16 are
    # forgotten. About 125 bytes an entry with its UUID: 150,000 take ~18 MiB of the 150 MiB
    # budget (use Redis to remember more).
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 150_000


def redis_client(config: RedisConfig) -> redis.asyncio.Redis:
    """A client that fails fast (one try, `timeout_s`), so callers fall back instead of hanging."""
    return redis.asyncio.Redis.from_url(
        config.url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )
