"""The Redis client for Courier's own keys (idempotency, revocations, task meta, worker heartbeats)."""

from __future__ import annotations

from functools import lru_cache

import redis

from app.config import get_settings


@lru_cache
def get_redis() -> redis.Redis:
    """Process-wide client; redis-py's pool reconnects after a fork, so prefork children can share this."""
    return redis.Redis.from_url(
        get_settings().redis_dsn, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
    )


@lru_cache
def shares_result_backend() -> bool:
    """Whether Courier's Redis (journal, revocations) is the result backend's, so one round trip reaches both."""
    settings = get_settings()
    return settings.redis_dsn == settings.result_backend_dsn
