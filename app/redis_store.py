"""The Redis clients of Courier's own keys (idempotency, revocations, task meta, worker heartbeats), the connection
options every Courier Redis client shares, and the check that a Redis persists what Courier accepts.

Connections are pooled, and a pooled connection dies with a Redis restart (or an idle timeout on the way). redis-py
8 retries nothing by default when a client is built from a URL (`ConnectionPool.from_url` leaves each connection
with `Retry(NoBackoff(), 0)`), so the first command on each dead connection failed: a burst after a restart got
503s although Redis was back. Every client here retries a command that failed on a connection error or a timeout
on a fresh connection, with jittered backoff, and PINGs a connection that sat idle before reusing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio.retry as async_retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from app.config import Environment, Settings, get_settings

logger = logging.getLogger(__name__)

#: Socket timeouts of every Redis command and connect.
SOCKET_TIMEOUT_S = 2.0
#: Retries of a command that failed on a connection error or timeout (each on a fresh connection), and their
#: backoff: exponential with full jitter, from RETRY_BASE_S, at most RETRY_CAP_S. Redis refusing connections
#: costs a caller well under a second before its 503; a Redis that hangs costs (1 + RETRIES) socket timeouts.
RETRIES = 2
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.5
#: A pooled connection idle longer than this is PINGed (and replaced when dead) before its next command.
HEALTH_CHECK_INTERVAL_S = 5
#: What a Redis that persists nothing means for Courier (health detail, start-up warning).
NO_PERSISTENCE = "persistence off: accepted tasks can be lost if Redis restarts"
#: The fix, named in every message about it.
PERSISTENCE_FIX = 'set "appendonly yes" (with "appendfsync everysec") on that Redis'


def _retried_errors() -> list[type[Exception]]:
    return [redis.ConnectionError, redis.TimeoutError]


def client_options() -> dict[str, Any]:
    """Connection options of Courier's synchronous Redis clients (pass to `redis.Redis.from_url`)."""
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": Retry(ExponentialWithJitterBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), RETRIES),
        "retry_on_error": _retried_errors(),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def async_client_options() -> dict[str, Any]:
    """`client_options` for redis.asyncio pools (whose connections take the asyncio Retry class)."""
    return {
        **client_options(),
        "retry": async_retry.Retry(ExponentialWithJitterBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), RETRIES),
    }


@lru_cache
def client_for(url: str) -> redis.Redis:
    """A process-wide client of one Redis URL; redis-py's pool reconnects after a fork, so prefork children can
    share it."""
    return redis.Redis.from_url(url, decode_responses=True, **client_options())


def get_redis() -> redis.Redis:
    """The client of Courier's own Redis (REDIS_URL, else the result backend's)."""
    return client_for(get_settings().redis_dsn)


@lru_cache
def shares_result_backend() -> bool:
    """Whether Courier's Redis (journal, revocations) is the result backend's, so one round trip reaches both."""
    settings = get_settings()
    return settings.redis_dsn == settings.result_backend_dsn


def redis_urls(settings: Settings) -> list[str]:
    """Every Redis Courier keeps task state in: its own and the result backend's (once when they are one)."""
    urls = [settings.redis_dsn, settings.result_backend_dsn]
    return [url for url in dict.fromkeys(urls) if url.startswith(("redis://", "rediss://", "unix://"))]


def describe(url: str) -> str:
    """A Redis URL as operators name it, without its credentials: host:port/db."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"


# --- Persistence --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Persistence:
    """What a Redis server persists. Only the append-only file counts as safe: an RDB snapshot taken every few
    minutes loses every task accepted since the last one when Redis restarts (README, "Redis durability")."""

    aof: bool | None  #: appendonly on; None when the server would not say (INFO and CONFIG refused)
    rdb: bool | None  #: RDB save points configured; None when unknown

    @property
    def safe(self) -> bool:
        """Whether an accepted task's meta, result and history entry survive a Redis restart."""
        return self.aof is True

    def describe(self) -> str:
        """A short phrase for logs and the health detail."""
        if self.aof:
            return "appendonly yes"
        if self.aof is None:
            return "persistence could not be read (INFO and CONFIG GET refused)"
        return "RDB snapshots only" if self.rdb else "appendonly no, no RDB save points"


def persistence(client: redis.Redis) -> Persistence:
    """Read the persistence of the server behind `client` (INFO persistence, else CONFIG GET appendonly).

    Raises:
        redis.ConnectionError, redis.TimeoutError: Redis is unreachable.
    """
    aof: bool | None = None
    try:
        info: dict[str, Any] = client.info("persistence")
        if "aof_enabled" in info:
            aof = bool(int(info["aof_enabled"]))
    except redis.ResponseError:  # INFO renamed or disabled (some managed services)
        pass
    rdb: bool | None = None
    try:
        if aof is None:
            aof = str(client.config_get("appendonly").get("appendonly", "")).lower() == "yes"
        rdb = bool(str(client.config_get("save").get("save", "")).strip())
    except redis.ResponseError:
        pass
    return Persistence(aof=aof, rdb=rdb)


class PersistenceRefused(RuntimeError):
    """Production refuses to start on a Redis that persists nothing (unless REDIS_ACCEPT_NO_PERSISTENCE)."""


def persistence_enforced(settings: Settings) -> bool:
    """Whether a Redis without persistence is refused (at start-up) and counts as down (in health)."""
    return settings.environment is Environment.production and not settings.redis_accept_no_persistence


def check_persistence_at_start(settings: Settings, *, process: str) -> None:
    """Start-up check of the API, the workers and the recorder: every Redis Courier uses must persist.

    Production refuses to start on one that does not (PersistenceRefused), unless REDIS_ACCEPT_NO_PERSISTENCE
    accepts the risk; elsewhere it is logged loudly, once. A Redis that does not answer is left to the health
    check: a service that is down does not stop a start.

    Raises:
        PersistenceRefused: production, a Redis persists nothing, and the risk is not accepted.
    """
    for url in redis_urls(settings):
        try:
            found = persistence(client_for(url))
        except redis.RedisError as exc:
            logger.warning("Could not read the persistence of Redis %s at start-up (%r).", describe(url), exc)
            continue
        if found.safe:
            continue
        message = (
            f"Redis {describe(url)} persists nothing Courier can rely on ({found.describe()}): a task the {process} "
            f"accepts or runs can become unknown if Redis restarts. Fix: {PERSISTENCE_FIX}"
        )
        if persistence_enforced(settings):
            raise PersistenceRefused(
                f"Refusing to start in production: {message}; or set REDIS_ACCEPT_NO_PERSISTENCE=true to accept "
                'the risk (README, "Redis durability").'
            )
        logger.warning('!!! %s (README, "Redis durability").', message)
