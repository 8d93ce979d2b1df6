"""The one place a Redis client is made from the config's `redis:` section. The settings
themselves (RedisConfig, DedupConfig) are defined with the rest of the config in
service/config.py; they are re-exported here for the modules that import them from here.
"""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import SEVEN_DAYS_S, DedupConfig, RedisConfig

__all__ = ["SEVEN_DAYS_S", "DedupConfig", "RedisConfig", "redis_client"]


def redis_client(config: RedisConfig) -> redis.asyncio.Redis:
    """A client that fails fast (one try, `timeout_s`), so callers fall back instead of hanging."""
    return redis.asyncio.Redis.from_url(
        config.url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )
