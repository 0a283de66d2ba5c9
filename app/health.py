"""Component health: broker, result backend, database and workers, each probed within a deadline."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy import inspect as sa_inspect

from app import redis_store
from app.config import Settings, get_settings
from app.constants import Tier
from app.db import get_engine, session_scope
from app.errors import BROKER, DATABASE, REDIS
from app.operations import service as operations
from app.rabbitmq import ManagementClient, ManagementError, broker_connection, connect_any
from app.runs.schemas import ComponentHealth, HealthRead

logger = logging.getLogger(__name__)

#: What the result backend's health probe writes (and lets expire).
HEALTH_KEY = "courier:health:write-probe"
#: Longest a component's health probe may take before the component counts as down (health answers within it).
CHECK_TIMEOUT_S = 3.0


def _timed(check: Callable[[], ComponentHealth | str | None]) -> ComponentHealth:
    """Run one component's probe with a deadline: its failure or its silence makes the component down, never an
    error of the health check. The probe runs in a thread of its own, so one that hangs past every client
    timeout is left behind (it ends with its socket) and does not hold the answer up."""
    deadline = CHECK_TIMEOUT_S
    started = time.perf_counter()
    outcome: list[ComponentHealth | str | None] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(check())
        except Exception as exc:
            failure.append(exc)

    probe = threading.Thread(target=run, name="courier-health-probe", daemon=True)
    probe.start()
    probe.join(deadline)
    latency = round((time.perf_counter() - started) * 1000, 2)
    if probe.is_alive():
        return ComponentHealth(status="down", latency_ms=latency, detail=f"no answer within {deadline:g} s")
    if failure:
        return ComponentHealth(status="down", latency_ms=latency, detail=_failure_detail(failure[0]))
    found = outcome[0] if outcome else None
    if isinstance(found, ComponentHealth):
        return found.model_copy(update={"latency_ms": latency})
    return ComponentHealth(status="up", latency_ms=latency, detail=found)


def _failure_detail(exc: BaseException) -> str:
    """The class of a probe's error, and for Redis its message (which names no credential)."""
    if isinstance(exc, redis.RedisError):
        return f"{type(exc).__name__}: {exc}"[:200]
    return type(exc).__name__


def check_broker(settings: Settings) -> ComponentHealth:
    """Open and close an AMQP connection to the broker, and read its nodes' resource alarms: under a memory or disk
    alarm RabbitMQ takes connections but blocks every publish, so each dispatch waits PUBLISH_TIMEOUT_S for a 503."""

    def probe() -> ComponentHealth:
        with broker_connection(settings, connect_timeout=2.0) as conn:
            connect_any(conn, settings)
        alarms = broker_alarms(settings)
        if alarms:
            return ComponentHealth(
                status="down", detail=f"{', '.join(alarms)}: RabbitMQ blocks every publish until it clears"
            )
        return ComponentHealth(status="up")

    return _timed(probe)


def broker_alarms(settings: Settings) -> list[str]:
    """The resource alarms RabbitMQ's nodes raise now ("memory alarm on rabbit@host"); none when its management API
    does not answer (that API's health is not the broker's, and the AMQP probe has answered)."""
    user, password = settings.broker_credentials
    try:
        with ManagementClient(settings.management_urls, user, password, timeout=2.0) as management:
            nodes = management.nodes()
    except ManagementError:
        return []
    kinds = (("mem_alarm", "memory"), ("disk_free_alarm", "disk"))
    return [f"{kind} alarm on {node.get('name')}" for node in nodes for key, kind in kinds if node.get(key)]


def check_redis(settings: Settings | None = None) -> ComponentHealth:
    """PING the result backend (and Courier's own Redis when it is another server), and read whether each
    persists: one that does not is reported in the detail, and counts as down where persistence is enforced
    (production, unless REDIS_ACCEPT_NO_PERSISTENCE)."""
    settings = settings or get_settings()

    def probe() -> ComponentHealth:
        unsafe = []
        for url in redis_store.redis_urls(settings):
            client = redis_store.client_for(url)
            if not client.ping():
                raise redis.ConnectionError(f"Redis {redis_store.describe(url)} did not answer PING")
            # A Redis that answers but refuses writes (its maxmemory reached, or its disk full) refuses every
            # dispatch's task meta: a write tells, a PING does not.
            client.set(HEALTH_KEY, "1", ex=60)
            found = redis_store.persistence(client)
            if not found.safe:
                unsafe.append(f"{redis_store.describe(url)}: {found.describe()}")
        if not unsafe:
            return ComponentHealth(status="up")
        detail = f"{redis_store.NO_PERSISTENCE} ({'; '.join(unsafe)}); {redis_store.PERSISTENCE_FIX}"
        return ComponentHealth(status="down" if redis_store.persistence_enforced(settings) else "up", detail=detail)

    return _timed(probe)


#: Alembic's table of the schema's revision (its default name).
VERSION_TABLE = "alembic_version"
#: The migrations this code ships (alembic.ini's script_location).
MIGRATIONS = Path(__file__).resolve().parent.parent / "alembic"


@functools.cache
def shipped_migrations() -> tuple[str | None, frozenset[str]]:
    """(the head revision, every revision) of the migrations shipped with this code; (None, none) without them."""
    if not (MIGRATIONS / "versions").is_dir():
        return None, frozenset()
    scripts = ScriptDirectory(str(MIGRATIONS))
    return scripts.get_current_head(), frozenset(script.revision for script in scripts.walk_revisions())


def schema_health(current: str | None) -> ComponentHealth:
    """The database's health by its schema revision: down when it has no Courier schema or one older than this
    code's (its queries would fail); up, saying so, when it is newer (a deploy has migrated it ahead of this
    process, which `start_tasks.sh restart` does before it replaces the processes)."""
    head, known = shipped_migrations()
    if head is None or current == head:
        return ComponentHealth(status="up")
    if current is None:
        return ComponentHealth(status="down", detail="no Courier schema: run `alembic upgrade head`")
    if current in known:
        return ComponentHealth(
            status="down", detail=f"schema at {current}, this code needs {head}: run `alembic upgrade head`"
        )
    return ComponentHealth(status="up", detail=f"schema at {current}, newer than this code's {head}")


def current_revision(conn: Connection) -> str | None:
    """The database's Alembic revision, None without a Courier schema. Read straight from `alembic_version`: Alembic's
    MigrationContext logged two INFO lines per call, two per health check in the API's log."""
    if not sa_inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def check_database(engine: Engine | None = None) -> ComponentHealth:
    """The SQL database answers (`engine`'s, by default the process's), with the schema this code needs."""

    def probe() -> ComponentHealth:
        with (engine or get_engine()).connect() as conn:
            return schema_health(current_revision(conn))

    return _timed(probe)


def check_workers() -> ComponentHealth:
    """Up when at least one worker heartbeat is fresh (heartbeats live in Redis, so down with it); the detail says
    which tiers have none."""

    def probe() -> ComponentHealth:
        found = operations.workers()
        if not found:
            return ComponentHealth(status="down", detail="no worker heartbeat")
        covered = {queue for worker in found for queue in worker.queues}
        paused = _paused_tiers()
        missing = [tier.value for tier in Tier if tier.value not in covered and tier.value not in paused]
        detail = f"{len(found)} worker(s)" + (f"; no worker consumes {', '.join(missing)}" if missing else "")
        detail += f"; paused: {', '.join(sorted(paused))}" if paused else ""
        return ComponentHealth(status="down" if missing else "up", detail=detail)

    return _timed(probe)


def health(settings: Settings) -> HealthRead:
    """Every component's health, checked concurrently; `up` only when all are."""
    checks: dict[str, Callable[[], ComponentHealth]] = {
        "broker": lambda: check_broker(settings),
        "result_backend": lambda: check_redis(settings),
        "database": check_database,
        "workers": check_workers,
    }
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="courier-health") as pool:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        components = {name: future.result() for name, future in futures.items()}
    # An outage the API's routes met (app/errors.py: 503s, logged once) ends when its component answers again.
    for outage, component in ((REDIS, "result_backend"), (DATABASE, "database"), (BROKER, "broker")):
        if components[component].status == "up":
            outage.log.succeeded()
    up = all(c.status == "up" for c in components.values())
    return HealthRead(status="up" if up else "down", components=components)


def _paused_tiers() -> set[str]:
    """Tiers an admin paused on purpose: no consumer there is not a fault (empty when SQL cannot say)."""
    try:
        with session_scope() as session:
            return operations.paused_names(session=session)
    except Exception:
        logger.warning("Could not read the paused tiers.", exc_info=True)
        return set()
