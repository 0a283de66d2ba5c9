"""Operations: pause and resume a tier across workers (durably), purge a queue, live workers (their heartbeats),
overview and performance. The broker and the live workers are reached through the `Broker` the adapter passes in
(the engine's: app/engine/inspect.py)."""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any, Protocol

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.access.schemas import Principal
from app.audit import service as audit_service
from app.constants import (
    DEAD_LETTER_QUEUE,
    REDIS_PREFIX,
    WORKER_HEARTBEAT_KEY,
    WORKER_REGISTRY_KEY,
    TaskState,
    Tier,
)
from app.db import utcnow
from app.deadletters import service as deadletters_service
from app.operations.exceptions import ConfirmationRequired, InvalidConfirmation, UnknownQueue
from app.operations.models import QueuePause
from app.operations.schemas import OverviewRead, PauseRead, PerformanceRead, TaskPerformance
from app.redis_store import get_redis
from app.runs import service as runs_service
from app.runs.models import TaskRun
from app.runs.schemas import QueueRead, WorkerRead

logger = logging.getLogger(__name__)

#: The states the overview counts as finished, and as failed (its "finished / min" and "failed / min" figures).
FINISHED_STATES = (TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED)
FAILED_STATES = (TaskState.FAILURE, TaskState.DEAD_LETTERED)
#: Tiers that can be paused.
PAUSABLE = tuple(t.value for t in Tier)
#: Queues that can be purged: the tiers and the dead-letter queue (its records stay in SQL).
PURGEABLE = (*PAUSABLE, DEAD_LETTER_QUEUE)
#: `courier:purge:<token>` → JSON {queue, actor} of a purge waiting for its confirmation (TTL below).
PURGE_TOKEN_KEY = REDIS_PREFIX + "purge:{token}"
#: Seconds a purge confirmation token stays valid.
PURGE_TOKEN_TTL_S = 120
#: Seconds a pause or resume broadcast waits for workers to acknowledge.
BROADCAST_TIMEOUT_S = 1.0
#: Remote-control commands the workers register (app/engine/pauses.py).
PAUSE_COMMAND = "courier_pause"
RESUME_COMMAND = "courier_resume"


class Broker(Protocol):
    """What this domain asks of the message broker and its live workers; the engine implements it
    (app/engine/inspect.py) and the adapters pass it in."""

    def broadcast(self, command: str, queue: str) -> list[str]:
        """Send a remote-control command to every worker; the names of those that acknowledged it."""
        ...

    def purge(self, queue: str) -> int:
        """Drop every ready message of `queue`; how many were dropped."""
        ...

    def ready(self, queue: str) -> int:
        """Ready messages of `queue` (exact)."""
        ...

    def queues(self) -> list[QueueRead]:
        """Depths, unacked counts and consumers of Courier's queues."""
        ...


def _actor_name(actor: Principal | str) -> str:
    return actor.name if isinstance(actor, Principal) else actor


def _check(queue: str, allowed: tuple[str, ...]) -> None:
    if queue not in allowed:
        raise UnknownQueue(queue, allowed)


def paused(*, session: Session) -> list[QueuePause]:
    """Every paused tier."""
    return list(session.scalars(select(QueuePause).order_by(QueuePause.queue)))


def paused_names(*, session: Session) -> set[str]:
    """Names of the paused tiers."""
    return set(session.scalars(select(QueuePause.queue)))


def pause(*, session: Session, queue: str, actor: Principal | str, reason: str | None, broker: Broker) -> list[str]:
    """Record the pause (durable, audited, committed), then tell live workers; returns who acknowledged."""
    _check(queue, PAUSABLE)
    if session.get(QueuePause, queue) is None:
        session.add(QueuePause(queue=queue, paused_by=_actor_name(actor), reason=reason))
    audit_service.record(session=session, actor=actor, action="queue.pause", target=f"queue:{queue}", reason=reason)
    session.commit()
    return broker.broadcast(PAUSE_COMMAND, queue)


def resume(*, session: Session, queue: str, actor: Principal | str, reason: str | None, broker: Broker) -> list[str]:
    """Delete the pause (audited, committed), then tell live workers to consume the tier again."""
    _check(queue, PAUSABLE)
    found = session.get(QueuePause, queue)
    if found is not None:
        session.delete(found)
    audit_service.record(session=session, actor=actor, action="queue.resume", target=f"queue:{queue}", reason=reason)
    session.commit()
    return broker.broadcast(RESUME_COMMAND, queue)


def purge_token(*, queue: str, actor: Principal | str, broker: Broker) -> None:
    """Issue a confirmation token for purging `queue` and raise it as a 409 (nothing is purged yet)."""
    _check(queue, PURGEABLE)
    token = secrets.token_urlsafe(16)
    get_redis().set(
        PURGE_TOKEN_KEY.format(token=token),
        json.dumps({"queue": queue, "actor": _actor_name(actor)}),
        ex=PURGE_TOKEN_TTL_S,
    )
    raise ConfirmationRequired(queue, broker.ready(queue), token, PURGE_TOKEN_TTL_S)


def confirm_purge(
    *, session: Session, queue: str, actor: Principal | str, token: str, reason: str | None, broker: Broker
) -> int:
    """Purge `queue` with a token issued for it and this actor (single use); audited. Returns messages dropped."""
    _check(queue, PURGEABLE)
    raw = get_redis().getdel(PURGE_TOKEN_KEY.format(token=token))
    issued = json.loads(str(raw)) if raw else None
    if not issued or issued.get("queue") != queue or issued.get("actor") != _actor_name(actor):
        raise InvalidConfirmation()
    return purge(session=session, queue=queue, actor=actor, reason=reason, broker=broker)


def purge(*, session: Session, queue: str, actor: Principal | str, reason: str | None, broker: Broker) -> int:
    """Drop every ready message of `queue` (the caller has confirmed); audited, committed."""
    _check(queue, PURGEABLE)
    dropped = broker.purge(queue)
    audit_service.record(
        session=session,
        actor=actor,
        action="queue.purge",
        target=f"queue:{queue}",
        reason=reason,
        details={"purged": dropped},
    )
    session.commit()
    logger.warning("Queue %s purged by %s: %d message(s) dropped.", queue, _actor_name(actor), dropped)
    return dropped


def workers() -> list[WorkerRead]:
    """Workers whose heartbeat is fresh (older ones have expired from Redis): the registry's hostnames, then their
    heartbeats in one MGET; a hostname whose heartbeat expired is taken out of the registry."""
    redis = get_redis()
    hostnames = sorted(redis.smembers(WORKER_REGISTRY_KEY))
    raws = redis.mget([WORKER_HEARTBEAT_KEY.format(hostname=name) for name in hostnames]) if hostnames else []
    gone = [name for name, raw in zip(hostnames, raws, strict=True) if raw is None]
    if gone:
        try:
            redis.srem(WORKER_REGISTRY_KEY, *gone)
        except RedisError:  # (a Redis that refuses writes: they are left out all the same)
            logger.debug("Could not drop expired workers %s from the registry.", gone, exc_info=True)
    now = time.time()
    found = []
    for raw in raws:
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


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return round(sorted_values[rank - 1], 4)


def performance(*, session: Session, window_s: int) -> PerformanceRead:
    """Finished runs in the last `window_s` seconds: throughput and P50/P95/max run time, per task and in all."""
    since = utcnow() - timedelta(seconds=window_s)
    finished = (TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED)
    rows = session.execute(
        select(TaskRun.name, TaskRun.state, TaskRun.runtime_s).where(
            TaskRun.finished_at >= since, TaskRun.state.in_([s.value for s in finished])
        )
    )
    by_name: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
    for name, state, runtime in rows:
        by_name[str(name)].append((str(state), runtime))
    minutes = window_s / 60
    tasks = []
    everything: list[float] = []
    for name in sorted(by_name):
        runs = by_name[name]
        times = sorted(r for _, r in runs if r is not None)
        everything.extend(times)
        tasks.append(
            TaskPerformance(
                name=name,
                finished=len(runs),
                succeeded=sum(1 for s, _ in runs if s == TaskState.SUCCESS),
                failed=sum(1 for s, _ in runs if s != TaskState.SUCCESS),
                per_minute=round(len(runs) / minutes, 4),
                p50_s=_percentile(times, 0.5),
                p95_s=_percentile(times, 0.95),
                max_s=round(times[-1], 4) if times else None,
            )
        )
    everything.sort()
    total = sum(t.finished for t in tasks)
    return PerformanceRead(
        window_s=window_s,
        finished=total,
        per_minute=round(total / minutes, 4),
        p50_s=_percentile(everything, 0.5),
        p95_s=_percentile(everything, 0.95),
        tasks=tasks,
    )


def overview(*, session: Session, broker: Broker, window_s: int = 300) -> OverviewRead:
    """Queues, workers, paused tiers, pending dead letters and the counts of the last `window_s` seconds.

    The broker and Redis are asked first: a session opens its transaction at its first query, and one held open
    while the management API answered kept a pooled connection "idle in transaction" for up to 14 s under load."""
    queues, live_workers = broker.queues(), workers()
    # From a whole second, so that a runs list filtered `since` this instant (a form's field holds no
    # microseconds) shows exactly the runs counted here.
    since = (utcnow() - timedelta(seconds=window_s)).replace(microsecond=0)
    counts = runs_service.counts_by_state(session=session, since=since)
    done = sum(counts.get(s, 0) for s in FINISHED_STATES)
    return OverviewRead(
        since=since,
        queues=queues,
        workers=live_workers,
        paused=[PauseRead.model_validate(p) for p in paused(session=session)],
        dead_letters_pending=sum(c for _, _, c in deadletters_service.pending_counts(session=session)),
        window_s=window_s,
        counts=counts,
        per_minute=round(done / (window_s / 60), 4),
    )


#: Seconds per point of the overview's charts.
SERIES_STEP_S = 60


def series(*, session: Session, window_s: int = 3600) -> dict[str, list[float]]:
    """Per minute over the last `window_s` seconds, from the run history: runs accepted, finished, failed (FAILURE
    or DEAD_LETTERED), and in flight (accepted, not finished) at each minute's end. `t` is each minute's start,
    in Unix seconds."""
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    points = max(1, math.ceil(window_s / SERIES_STEP_S))
    origin = since.timestamp()

    def per_minute(column: InstrumentedAttribute[Any], *conditions: ColumnElement[bool]) -> list[int]:
        bucket = func.floor((func.extract("epoch", column) - origin) / SERIES_STEP_S)
        counts = [0] * points
        query = select(bucket, func.count()).where(column >= since, *conditions).group_by(bucket)
        for index, count in session.execute(query):
            if index is not None and 0 <= int(index) < points:
                counts[int(index)] += int(count)
        return counts

    accepted = per_minute(TaskRun.created_at)
    finished = per_minute(TaskRun.finished_at)
    failed = per_minute(
        TaskRun.finished_at, TaskRun.state.in_([TaskState.FAILURE.value, TaskState.DEAD_LETTERED.value])
    )
    # In flight as the window opens: accepted the day before it, not finished by then.
    in_flight = int(
        session.scalar(
            select(func.count()).where(
                TaskRun.created_at < since,
                TaskRun.created_at >= since - timedelta(days=1),
                (TaskRun.finished_at.is_(None)) | (TaskRun.finished_at >= since),
            )
        )
        or 0
    )
    backlog = []
    for came, went in zip(accepted, finished, strict=True):
        in_flight = max(0, in_flight + came - went)
        backlog.append(in_flight)
    return {
        "t": [origin + i * SERIES_STEP_S for i in range(points)],
        "accepted": [float(v) for v in accepted],
        "finished": [float(v) for v in finished],
        "failed": [float(v) for v in failed],
        "in_flight": [float(v) for v in backlog],
    }
