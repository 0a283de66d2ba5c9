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
from urllib.parse import unquote, urlsplit

import redis
import redis._parsers.base
import redis.asyncio as aioredis
import redis.asyncio.retry as async_retry
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from app.config import Environment, Settings, get_settings

logger = logging.getLogger(__name__)


class PersistenceError(redis.exceptions.ResponseError):
    """Redis refuses writes because it could not persist earlier ones (`MISCONF`: an append-only file write or an RDB
    save failed, e.g. its disk is full). It passes once Redis can write again: an outage, like OutOfMemoryError."""


# redis-py names an error reply's class by its first word, and has none for MISCONF (a bare ResponseError, which
# Courier would take for a bug: a task rejected as malformed, a 500). Every parser, sync, async and hiredis, reads
# this one table.
redis._parsers.base.BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", PersistenceError)

#: Redis errors that mean "unreachable or refusing writes for now", wherever Courier meets Redis: refused or dropped
#: connections (BusyLoadingError, a Redis still loading its data set, is one), timeouts, a replica answering writes
#: during a failover, a Redis at its `maxmemory` (noeviction), and one that cannot persist (its disk full).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    PersistenceError,
)

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


# --- Sentinel -------------------------------------------------------------------------------------------------
#
# With REDIS_SENTINELS, Courier's Redis DSNs take Celery's Sentinel form, `sentinel://:pw@s1:26379/db;...`
# (app/config.py), and every client here is the primary the Sentinels name REDIS_SENTINEL_MASTER. A connection
# that fails (the primary died) or meets a read-only server (the old primary, back as a replica) is dropped, and
# the retry above asks the Sentinels again on a fresh one: a client follows a failover within the time the
# Sentinels take to promote the replica (down-after-milliseconds plus an election: seconds).


@dataclass(frozen=True)
class SentinelTarget:
    """The parts of a Sentinel DSN: the Sentinels' addresses, and the db and password of the primary."""

    addresses: list[tuple[str, int]]
    db: int
    password: str | None


def is_sentinel(url: str) -> bool:
    """Whether `url` is a Sentinel DSN (Courier's own Redis or the result backend through Sentinel)."""
    return url.startswith("sentinel://")


def sentinel_target(url: str) -> SentinelTarget:
    """Parse a `sentinel://:pw@host:port/db;sentinel://...` DSN."""
    addresses, db, password = [], 0, None
    for chunk in url.split(";"):
        parts = urlsplit(chunk.strip())
        addresses.append((parts.hostname or "127.0.0.1", parts.port or 26379))
        db = int((parts.path or "/0").lstrip("/") or 0)
        password = unquote(parts.password) if parts.password else password
    return SentinelTarget(addresses=addresses, db=db, password=password)


def _sentinel_kwargs() -> dict[str, Any]:
    """How Courier talks to the Sentinels themselves: short timeouts, their own password when they have one."""
    password = get_settings().redis_sentinel_password
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        **({"password": password} if password else {}),
    }


def _sentinel_client(url: str) -> redis.Redis:
    target = sentinel_target(url)
    sentinel = redis.sentinel.Sentinel(target.addresses, sentinel_kwargs=_sentinel_kwargs())  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        get_settings().redis_sentinel_master,
        db=target.db,
        password=target.password,
        decode_responses=True,
        **client_options(),
    )
    return client


#: The connections an asyncio client through Sentinel may open: redis-py offers it no blocking pool, and its own
#: default bound (100) made a burst of concurrent dispatches fail with MaxConnectionsError, answered 503 "Redis is
#: unavailable" while Redis was fine (the cluster operator's outside test, 33 of them).
SENTINEL_ASYNC_MAX_CONNECTIONS = 10_000


def async_client(url: str, *, max_connections: int) -> aioredis.Redis:
    """An asyncio client of a Redis URL or Sentinel DSN. From a URL its pool blocks (up to 2 s) when all
    `max_connections` are busy; through Sentinel redis-py offers no blocking pool, so its pool is bounded only by
    SENTINEL_ASYNC_MAX_CONNECTIONS."""
    if is_sentinel(url):
        target = sentinel_target(url)
        # (each command asks a Sentinel for the primary: its connections are bounded alike)
        asking = {**_sentinel_kwargs(), "max_connections": SENTINEL_ASYNC_MAX_CONNECTIONS}
        sentinel = async_sentinel.Sentinel(target.addresses, sentinel_kwargs=asking)  # type: ignore[no-untyped-call]
        client: aioredis.Redis = sentinel.master_for(
            get_settings().redis_sentinel_master,
            db=target.db,
            password=target.password,
            decode_responses=True,
            max_connections=SENTINEL_ASYNC_MAX_CONNECTIONS,
            **async_client_options(),
        )
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=2.0, **async_client_options()
    )
    return aioredis.Redis(connection_pool=pool)


@lru_cache
def client_for(url: str) -> redis.Redis:
    """A process-wide client of one Redis URL or Sentinel DSN; redis-py's pool reconnects after a fork, so prefork
    children can share it."""
    if is_sentinel(url):
        return _sentinel_client(url)
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
    return [url for url in dict.fromkeys(urls) if url.startswith(("redis://", "rediss://", "unix://", "sentinel://"))]


def describe(url: str) -> str:
    """A Redis URL as operators name it, without its credentials: host:port/db (through Sentinel: the master
    name, the db and the Sentinels)."""
    if is_sentinel(url):
        target = sentinel_target(url)
        sentinels = ",".join(f"{host}:{port}" for host, port in target.addresses)
        return f"{get_settings().redis_sentinel_master}/{target.db} (Sentinels {sentinels})"
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
