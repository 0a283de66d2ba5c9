"""Operations: pause and resume a tier across workers (durably), purge a queue, overview and performance."""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections import defaultdict
from datetime import timedelta

from kombu.connection import Connection
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.access.service import Principal
from app.audit import service as audit_service
from app.config import Settings
from app.constants import DEAD_LETTER_QUEUE, REDIS_PREFIX, TaskState, Tier
from app.db import utcnow
from app.deadletters import service as deadletters_service
from app.operations.exceptions import ConfirmationRequired, InvalidConfirmation, UnknownQueue
from app.operations.models import QueuePause
from app.operations.schemas import OverviewRead, PauseRead, PerformanceRead, TaskPerformance
from app.redis_store import get_redis
from app.runs import service as runs_service
from app.runs.models import TaskRun

logger = logging.getLogger(__name__)

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


def pause(*, session: Session, queue: str, actor: Principal | str, reason: str | None) -> list[str]:
    """Record the pause (durable, audited, committed), then tell live workers; returns who acknowledged."""
    _check(queue, PAUSABLE)
    if session.get(QueuePause, queue) is None:
        session.add(QueuePause(queue=queue, paused_by=_actor_name(actor), reason=reason))
    audit_service.record(session=session, actor=actor, action="queue.pause", target=f"queue:{queue}", reason=reason)
    session.commit()
    return _broadcast(PAUSE_COMMAND, queue)


def resume(*, session: Session, queue: str, actor: Principal | str, reason: str | None) -> list[str]:
    """Delete the pause (audited, committed), then tell live workers to consume the tier again."""
    _check(queue, PAUSABLE)
    found = session.get(QueuePause, queue)
    if found is not None:
        session.delete(found)
    audit_service.record(session=session, actor=actor, action="queue.resume", target=f"queue:{queue}", reason=reason)
    session.commit()
    return _broadcast(RESUME_COMMAND, queue)


def _broadcast(command: str, queue: str) -> list[str]:
    """Send a remote-control command to every worker; the ones that consume the tier act on it."""
    from app.engine.celery_app import celery_app

    try:
        replies = celery_app.control.broadcast(
            command, arguments={"queue": queue}, reply=True, timeout=BROADCAST_TIMEOUT_S
        )
    except Exception:  # the durable record is written; workers read it again when they (re)start
        logger.warning("Broadcasting %s %s failed; workers apply it when they restart.", command, queue, exc_info=True)
        return []
    return sorted(name for reply in replies or [] for name, answer in reply.items() if answer.get("ok"))


def purge_token(*, queue: str, actor: Principal | str, settings: Settings) -> None:
    """Issue a confirmation token for purging `queue` and raise it as a 409 (nothing is purged yet)."""
    _check(queue, PURGEABLE)
    token = secrets.token_urlsafe(16)
    get_redis().set(
        PURGE_TOKEN_KEY.format(token=token),
        json.dumps({"queue": queue, "actor": _actor_name(actor)}),
        ex=PURGE_TOKEN_TTL_S,
    )
    raise ConfirmationRequired(queue, ready_messages(settings, queue), token, PURGE_TOKEN_TTL_S)


def confirm_purge(
    *, session: Session, queue: str, actor: Principal | str, token: str, reason: str | None, settings: Settings
) -> int:
    """Purge `queue` with a token issued for it and this actor (single use); audited. Returns messages dropped."""
    _check(queue, PURGEABLE)
    raw = get_redis().getdel(PURGE_TOKEN_KEY.format(token=token))
    issued = json.loads(str(raw)) if raw else None
    if not issued or issued.get("queue") != queue or issued.get("actor") != _actor_name(actor):
        raise InvalidConfirmation()
    return purge(session=session, queue=queue, actor=actor, reason=reason, settings=settings)


def purge(*, session: Session, queue: str, actor: Principal | str, reason: str | None, settings: Settings) -> int:
    """Drop every ready message of `queue` (the caller has confirmed); audited, committed."""
    _check(queue, PURGEABLE)
    with Connection(settings.broker_url, connect_timeout=5.0) as conn:
        dropped = int(conn.default_channel.queue_purge(queue) or 0)
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


def ready_messages(settings: Settings, queue: str) -> int:
    """Ready messages of a queue, over AMQP (exact)."""
    with Connection(settings.broker_url, connect_timeout=5.0) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue, passive=True)
    return int(ready)


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


def overview(*, session: Session, settings: Settings, window_s: int = 300) -> OverviewRead:
    """Queues, workers, paused tiers, pending dead letters and the counts of the last `window_s` seconds."""
    from app.tasks import control

    counts = runs_service.counts_by_state(session=session, since=utcnow() - timedelta(seconds=window_s))
    done = sum(counts.get(s, 0) for s in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED))
    return OverviewRead(
        queues=control.queues(settings),
        workers=control.workers(),
        paused=[PauseRead.model_validate(p) for p in paused(session=session)],
        dead_letters_pending=sum(c for _, _, c in deadletters_service.pending_counts(session=session)),
        window_s=window_s,
        counts=counts,
        per_minute=round(done / (window_s / 60), 4),
    )
