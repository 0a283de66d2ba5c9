"""Read and steer live work: task status, revoke, queues, workers, inspect, and component health."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.connection import Connection
from sqlalchemy import text
from sqlalchemy.orm import Session

from app import redis_store
from app.config import Settings, get_settings
from app.constants import DELAY_BUCKETS_S, TASK_META_KEY, WORKER_HEARTBEAT_PATTERN, TaskState, Tier
from app.db import get_engine
from app.deadletters import service as deadletters_service
from app.engine import topology
from app.engine.celery_app import celery_app
from app.errors import BROKER, DATABASE, REDIS, ServiceUnavailable
from app.rabbitmq import ManagementClient, ManagementError
from app.redis_store import get_redis
from app.runs import revocations
from app.runs import service as runs_service
from app.runs.schemas import (
    ActiveTask,
    ComponentHealth,
    HealthRead,
    QueueRead,
    RevokeRead,
    ScheduledRead,
    TaskRead,
    WorkerRead,
)

logger = logging.getLogger(__name__)

#: How long a broadcast (inspect) waits for workers to answer.
INSPECT_TIMEOUT_S = 1.0
#: Longest a component's health probe may take before the component counts as down (health answers within it).
CHECK_TIMEOUT_S = 3.0


def task_meta(task_id: str) -> dict[str, str]:
    """What the publisher wrote about a task (name, tier, triggered_by); empty once expired."""
    meta: dict[str, str] = get_redis().hgetall(TASK_META_KEY.format(task_id=task_id))  # type: ignore[assignment]
    return meta


def task_status(*, session: Session, task_id: str) -> TaskRead | None:
    """Merge the live result (Redis) with the durable history (SQL); None for an id never seen."""
    meta = task_meta(task_id)
    run = runs_service.get(session=session, task_id=task_id)
    result = AsyncResult(task_id, app=celery_app)
    backend = result.backend.get_task_meta(task_id)
    backend_state = str(backend.get("status") or TaskState.PENDING)
    if not meta and run is None and backend_state == TaskState.PENDING:
        return None
    state: str = backend_state
    if run is not None and (
        backend_state == TaskState.PENDING or run.state in (TaskState.REVOKED, TaskState.DEAD_LETTERED)
    ):
        state = run.state
    payload = backend.get("result")
    error = None
    progress = None
    if backend_state in (TaskState.FAILURE, TaskState.RETRY):
        error = _describe_exception(payload)
        payload = None
    elif backend_state not in (TaskState.SUCCESS, TaskState.PENDING) and isinstance(payload, dict):
        progress, payload = payload, None
    elif backend_state == TaskState.REVOKED:
        payload = None
    return TaskRead(
        task_id=task_id,
        name=(run.name if run is not None and run.name else None) or backend.get("name") or meta.get("name"),
        state=state,
        tier=(run.tier if run is not None else None) or meta.get("tier") or backend.get("queue"),
        attempts=run.attempts if run is not None else _attempts_from_backend(backend),
        triggered_by=(run.triggered_by if run is not None else None) or meta.get("triggered_by") or None,
        worker=(run.worker if run is not None else None) or backend.get("worker"),
        result=payload,
        error=error or (run.error if run is not None and state != TaskState.SUCCESS else None),
        progress=progress,
        created_at=run.created_at if run is not None else _from_ts(meta.get("dispatched_at")),
        started_at=run.started_at if run is not None else None,
        finished_at=(run.finished_at if run is not None else None) or backend.get("date_done"),
        revoked=revocations.is_revoked(task_id),
        dead_letter=_dead_letter_link(session, task_id) if state == TaskState.DEAD_LETTERED else None,
    )


def _dead_letter_link(session: Session, task_id: str) -> dict[str, Any] | None:
    letter = deadletters_service.latest_for_task(session=session, task_id=task_id)
    if letter is None:
        return None
    return {
        "id": letter.id,
        "reason": letter.reason,
        "status": letter.status,
        "error": letter.error,
        "url": f"/api/v1/tasks/dead-letters/{letter.id}",
    }


def owner_of(*, session: Session, task_id: str) -> str | None:
    """The key name that dispatched a task, from Redis or the history."""
    meta = task_meta(task_id)
    if meta.get("triggered_by"):
        return meta["triggered_by"]
    run = runs_service.get(session=session, task_id=task_id)
    return run.triggered_by if run is not None else None


def _attempts_from_backend(backend: dict[str, Any]) -> int | None:
    """Attempts so far from an extended result (retries + 1); None before any worker touched it."""
    return int(backend.get("retries") or 0) + 1 if backend.get("name") else None


def _describe_exception(payload: Any) -> str | None:
    if isinstance(payload, BaseException):
        return f"{type(payload).__name__}: {payload}"
    if isinstance(payload, dict) and "exc_type" in payload:
        return f"{payload.get('exc_type')}: {' '.join(str(a) for a in payload.get('exc_message') or ())}"
    return str(payload) if payload is not None else None


def _from_ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def revoke(*, session: Session, task_id: str, terminate: bool, revoked_by: str, reason: str | None) -> RevokeRead:
    """Revoke durably (SQL, then Redis), mark the run REVOKED, then tell live workers."""
    meta = task_meta(task_id)
    run = runs_service.get(session=session, task_id=task_id)
    if run is not None and run.state in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED):
        return RevokeRead(task_id=task_id, revoked=False, terminate=terminate, state=run.state)
    revocations.record(session=session, task_id=task_id, revoked_by=revoked_by, terminate=terminate, reason=reason)
    runs_service.mark_revoked(session=session, task_id=task_id, name=meta.get("name"), revoked_by=revoked_by)
    try:
        celery_app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")
    except Exception:  # the durable record already stops it; the broadcast only speeds up running workers
        logger.warning("Broadcasting the revoke of %s failed; workers will still refuse it.", task_id, exc_info=True)
    logger.info("Task %s revoked by %s (terminate=%s).", task_id, revoked_by, terminate)
    return RevokeRead(task_id=task_id, revoked=True, terminate=terminate, state=TaskState.REVOKED)


def queues(settings: Settings) -> list[QueueRead]:
    """Depth, unacked count and consumers of the work queues and both dead-letter queues, plus one
    `delay.<tier>` line per tier summing the retries waiting in that tier's delay queues."""
    try:
        with ManagementClient.for_broker_user(settings) as client:
            live = {q["name"]: q for q in client.queues(settings.broker_vhost)}
    except ManagementError as exc:
        raise ServiceUnavailable("The RabbitMQ management API is unreachable.") from exc

    def count(name: str, field: str) -> int:
        return int(live.get(name, {}).get(field, 0) or 0)

    listed = [
        *topology.work_queues(settings),
        topology.dead_letter_queue(settings),
        topology.dead_letter_archive_queue(settings),
    ]
    found = [
        QueueRead(
            name=q.name,
            ready=count(q.name, "messages_ready"),
            unacked=count(q.name, "messages_unacknowledged"),
            consumers=count(q.name, "consumers"),
            policy=live.get(q.name, {}).get("policy"),
            arguments=live.get(q.name, {}).get("arguments") or {},
        )
        for q in listed
    ]
    for tier in Tier:
        delays = [topology.delay_queue(tier, s).name for s in DELAY_BUCKETS_S]
        found.append(
            QueueRead(
                name=f"delay.{tier.value}",
                ready=sum(count(n, "messages_ready") for n in delays),
                unacked=0,
                consumers=0,
                policy=None,
                arguments={},
            )
        )
    return found


def workers() -> list[WorkerRead]:
    """Workers whose heartbeat is fresh (older ones have expired from Redis)."""
    redis = get_redis()
    keys = sorted(redis.scan_iter(match=WORKER_HEARTBEAT_PATTERN, count=200))
    now = time.time()
    found = []
    for raw in redis.mget(keys) if keys else []:
        if raw is None:
            continue
        beat = json.loads(raw)
        found.append(
            WorkerRead(
                hostname=beat["hostname"],
                pid=beat.get("pid"),
                queues=beat.get("queues") or [],
                concurrency=beat.get("concurrency"),
                pool=beat.get("pool"),
                heartbeat_age_s=round(max(0.0, now - float(beat["ts"])), 3),
                uptime_s=round(now - float(beat["started_at"]), 1) if beat.get("started_at") else None,
            )
        )
    return found


def active() -> list[ActiveTask]:
    """Tasks executing now, from a broadcast to live workers."""
    replies = celery_app.control.inspect(timeout=INSPECT_TIMEOUT_S).active() or {}
    return [
        ActiveTask(
            task_id=task["id"],
            name=task.get("name"),
            worker=worker,
            started_at=_from_ts(str(task["time_start"])) if task.get("time_start") else None,
            args=task.get("args"),
            kwargs=task.get("kwargs"),
        )
        for worker, tasks in sorted(replies.items())
        for task in tasks or []
    ]


def scheduled() -> ScheduledRead:
    """ETA/countdown tasks held by workers, and beat's periodic schedule."""
    replies = celery_app.control.inspect(timeout=INSPECT_TIMEOUT_S).scheduled() or {}
    held = [
        {
            "worker": worker,
            "eta": item.get("eta"),
            "priority": item.get("priority"),
            "task_id": (item.get("request") or {}).get("id"),
            "name": (item.get("request") or {}).get("name"),
        }
        for worker, items in sorted(replies.items())
        for item in items or []
    ]
    periodic = [
        {
            "name": key,
            "task": entry["task"],
            "schedule": str(entry["schedule"]),
            "queue": celery_app.conf.task_routes.get(entry["task"], {}).get("queue"),
        }
        for key, entry in sorted(celery_app.conf.beat_schedule.items())
    ]
    return ScheduledRead(held=held, periodic=periodic)


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
    """Open and close an AMQP connection to the broker."""

    def probe() -> None:
        with Connection(settings.broker_url, connect_timeout=2.0) as conn:
            conn.connect()

    return _timed(probe)


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
            found = redis_store.persistence(client)
            if not found.safe:
                unsafe.append(f"{redis_store.describe(url)}: {found.describe()}")
        if not unsafe:
            return ComponentHealth(status="up")
        detail = f"{redis_store.NO_PERSISTENCE} ({'; '.join(unsafe)}); {redis_store.PERSISTENCE_FIX}"
        return ComponentHealth(status="down" if redis_store.persistence_enforced(settings) else "up", detail=detail)

    return _timed(probe)


def check_database() -> ComponentHealth:
    """SELECT 1 on the SQL database."""

    def probe() -> None:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))

    return _timed(probe)


def check_workers() -> ComponentHealth:
    """Up when at least one worker heartbeat is fresh (heartbeats live in Redis, so down with it); the detail says
    which tiers have none."""

    def probe() -> ComponentHealth:
        found = workers()
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
    from app.db import session_scope
    from app.operations import service as operations

    try:
        with session_scope() as session:
            return operations.paused_names(session=session)
    except Exception:
        logger.warning("Could not read the paused tiers.", exc_info=True)
        return set()
