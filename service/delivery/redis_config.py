"""Config of the optional Redis (shared rate limit, dedup store) and of the dedup store, and the
one place a Redis client is made from it.

    redis:                       # optional; without it each replica limits alone
      url: ${REDIS_URL}          # redis://[:password@]host:port/db or rediss:// for TLS
      replicas: 3                # without Redis, each replica takes per_s / replicas
      key_prefix: "conversion-relay:"
      timeout_s: 0.5             # per command; a slower Redis counts as down
      reprobe_s: 5.0             # while down, how often the limiter tries Redis again

    dedup:
      backend: memory            # memory | redis
      ttl_s: 604800              # 7 days
      max_entries: 150000        # memory backend only (LRU beyond it; ~40 MiB)
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

    url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")]
    replicas: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    key_prefix: str = "conversion-relay:"
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    reprobe_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class DedupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where delivered (vendor, event_id) pairs are remembered, and for how long."""

    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = SEVEN_DAYS_S
    # About 280 bytes an entry with its UUID: 150,000 take ~40 MiB of the 150 MiB budget.
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
