"""The dead-letter store: record dead-lettered messages with their reason, list them, mark them replayed, discard
them.

The store works on plain data. Reading a message off the dead-letter queue (Celery's protocol-2 body, RabbitMQ's
x-death, the headers a worker declared) and publishing a replay are the engine's (app/engine/dead_letters.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.access.schemas import Principal
from app.audit import service as audit_service
from app.db import sql_json, sql_text, utcnow
from app.deadletters.exceptions import DeadLetterNotFound, NotReplayable
from app.deadletters.models import DeadLetter, Reason, Status
from app.events import service as events
from app.runs import service as runs_service

logger = logging.getLogger(__name__)

#: Argument names whose values are never stored (product rule 6: secrets never travel; this is the backstop).
SECRET_NAME = re.compile(r"pass(word)?|secret|token|api[_-]?key|authorization|credential|(^|_)(otp|pin|code)$", re.I)
REDACTED = "[redacted]"
#: Errors that mean a Redis outage (BusyLoadingError is a ConnectionError), as app/engine/guarantees/outages.py
# counts them: by class, module-qualified, anywhere in the error's class hierarchy.
REDIS_OUTAGE = frozenset(
    {
        *(
            f"redis.exceptions.{name}"
            for name in ("ConnectionError", "TimeoutError", "ReadOnlyError", "OutOfMemoryError")
        ),
        "app.redis_store.PersistenceError",
    }
)
#: The time-limit errors of Celery's pool (billiard's classes, re-exported by celery.exceptions).
TIME_LIMITS = frozenset({"billiard.exceptions.SoftTimeLimitExceeded", "billiard.exceptions.TimeLimitExceeded"})
#: Celery's error for a message that expired (or was revoked) before it ran.
REVOKED = "celery.exceptions.TaskRevokedError"
TRACEBACK_MAX_CHARS = 8000


@dataclass(frozen=True)
class Failure:
    """The error a task's stored result holds, as plain data."""

    #: Every class of the error, most derived first, each as `module.QualifiedName`.
    classes: tuple[str, ...]
    #: `ErrorClass: message`.
    text: str
    #: The error's class name; for an outage a worker reported (InfraUnavailable), the Redis error's.
    error_class: str
    #: Whether the task retries on this error (one of its autoretry_for classes).
    retryable: bool

    @property
    def name(self) -> str:
        return self.classes[0].rsplit(".", 1)[-1] if self.classes else ""


@dataclass(frozen=True)
class Arrival:
    """One dead-lettered message, decoded by the engine into what the store keeps and classifies."""

    fingerprint: str
    task_id: str | None
    task_name: str | None
    #: (args, kwargs) of a decodable task message; None when the body is not one.
    decoded: tuple[list[Any], dict[str, Any]] | None
    #: RabbitMQ's reason (x-death): expired, maxlen, delivery_limit, rejected; None when a worker published it.
    amqp_reason: str | None
    #: (reason, error class, error) a worker declared in headers when it dead-lettered the message itself.
    declared: tuple[Reason, str | None, str | None] | None
    known_task: bool
    failure: Failure | None
    traceback: str | None
    queue: str | None
    exchange: str | None
    routing_key: str | None
    retries: int
    death_count: int
    first_death_at: datetime | None
    replays: int
    content_type: str | None
    content_encoding: str | None
    properties: dict[str, Any]
    #: Headers, secrets already redacted, as JSON values.
    headers: dict[str, Any]
    body: str
    body_base64: bool


def redact(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, Mapping):
        return {k: REDACTED if SECRET_NAME.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _column(value: str | None, column: Any) -> str | None:
    """`value` as the String column `column` holds it (`sql_text`, cut to the column's length)."""
    return sql_text(value, column.type.length) if value is not None else None


def classify(
    *,
    amqp_reason: str | None,
    task_id: str | None,
    name: str | None,
    decoded: bool,
    known_task: bool,
    failure: Failure | None,
) -> tuple[Reason, Failure | None]:
    """Why a message was dead-lettered, from RabbitMQ's x-death reason and the error its task stored."""
    if not decoded or not task_id or not name:
        return Reason.malformed, None
    if amqp_reason == "expired":
        return Reason.expired, None
    if amqp_reason == "maxlen":
        return Reason.queue_full, None
    if amqp_reason == "delivery_limit":
        return Reason.worker_lost, None
    if not known_task:
        return Reason.unknown_task, None
    if failure is None:
        # Celery rejected it before running it (content type, arguments): nothing was stored.
        return Reason.malformed, None
    if REVOKED in failure.classes:
        return Reason.expired, failure
    if TIME_LIMITS.intersection(failure.classes):
        return Reason.timeout, failure
    if failure.name in ("WorkerLostError", "WorkerKilledRepeatedly"):
        return Reason.worker_lost, failure
    if failure.name == "NotRegistered":
        return Reason.unknown_task, failure
    if failure.name == "Unroutable":
        return Reason.unroutable, failure
    if failure.name == "InfraUnavailable" or REDIS_OUTAGE.intersection(failure.classes):
        return Reason.infra_unavailable, failure
    if failure.retryable:
        return Reason.retries_exhausted, failure
    return Reason.failed, failure


def record(*, session: Session, arrival: Arrival) -> DeadLetter | None:
    """Store one dead-lettered message; None when this exact death was recorded already."""
    if session.scalar(select(DeadLetter.id).where(DeadLetter.fingerprint == arrival.fingerprint)) is not None:
        return None
    task_id, name, decoded = arrival.task_id, arrival.task_name, arrival.decoded
    reason, failure = classify(
        amqp_reason=arrival.amqp_reason,
        task_id=task_id,
        name=name,
        decoded=decoded is not None,
        known_task=arrival.known_task,
        failure=arrival.failure,
    )
    error_class = failure.error_class if failure is not None else None
    error = failure.text[:2000] if failure is not None else _error_text(reason, name)
    declared = arrival.declared if decoded is not None and task_id and name else None
    if declared is not None:  # the worker said why: its result backend may not know (it was the one down)
        reason, error_class, error = declared
    args, kwargs = decoded if decoded is not None else (None, None)
    # Everything from the message is made storable: it came from outside, and one value PostgreSQL refused (a NUL,
    # NaN, a task name past its column) kept the letter at the head of its queue, every later one stuck behind it.
    letter = DeadLetter(
        fingerprint=arrival.fingerprint,
        task_id=_column(task_id, DeadLetter.task_id),
        task_name=_column(name, DeadLetter.task_name),
        reason=reason,
        error_class=_column(error_class, DeadLetter.error_class),
        error=sql_text(error) if error is not None else None,
        traceback=sql_text(arrival.traceback[-TRACEBACK_MAX_CHARS:]) if arrival.traceback else None,
        args=sql_json(redact(args)) if args is not None else None,
        kwargs=sql_json(redact(kwargs)) if kwargs is not None else None,
        queue=_column(arrival.queue, DeadLetter.queue),
        exchange=_column(arrival.exchange, DeadLetter.exchange),
        routing_key=_column(arrival.routing_key, DeadLetter.routing_key),
        retries=arrival.retries,
        death_count=arrival.death_count,
        # x-death keeps the time of the first death per (queue, reason); this recording is the latest one.
        first_death_at=arrival.first_death_at,
        last_death_at=utcnow(),
        replays=arrival.replays,
        content_type=_column(arrival.content_type, DeadLetter.content_type),
        content_encoding=_column(arrival.content_encoding, DeadLetter.content_encoding),
        properties=sql_json(arrival.properties),
        headers=sql_json(arrival.headers),
        body=arrival.body,
        body_base64=arrival.body_base64,
    )
    session.add(letter)
    if task_id:
        runs_service.mark_dead_lettered(
            session=session,
            task_id=letter.task_id or task_id,
            name=letter.task_name,
            error=f"{reason.value}: {letter.error}" if letter.error else reason.value,
        )
    session.flush()
    logger.info("Recorded dead letter %s: %s[%s], reason %s.", letter.id, name, task_id, reason.value)
    _emit_dead_lettered(session, letter)
    return letter


def _emit_dead_lettered(session: Session, letter: DeadLetter) -> None:
    """Tell webhook subscribers (`task.dead_lettered`), in the recording's transaction. A dead-lettered webhook
    delivery emits nothing: an endpoint that fails could otherwise feed itself an endless stream of events."""
    if letter.task_name == events.DELIVERY_TASK:
        return
    events.emit(
        session,
        "task.dead_lettered",
        {
            "dead_letter_id": letter.id,
            "task_id": letter.task_id,
            "task_name": letter.task_name,
            "reason": letter.reason.value,
            "error_class": letter.error_class,
            "queue": letter.queue,
        },
    )


def _error_text(reason: Reason, name: str | None) -> str | None:
    return {
        Reason.malformed: "The message could not be decoded as a Celery task (body, content type or headers).",
        Reason.unknown_task: f"No task named {name!r} is registered.",
        Reason.expired: "The message expired before a worker ran it.",
        Reason.queue_full: "The queue's length cap pushed the message out.",
        Reason.worker_lost: "The broker's delivery limit was reached: the message kept killing its worker.",
    }.get(reason)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Filters for listing, bulk replay and purge; None means any."""

    task_name: str | None = None
    reason: Reason | None = None
    queue: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: Status | None = Status.pending
    task_id: str | None = None


def _filtered(filters: DeadLetterFilter) -> Any:
    query = select(DeadLetter)
    for column, value in (
        (DeadLetter.task_name, filters.task_name),
        (DeadLetter.reason, filters.reason),
        (DeadLetter.queue, filters.queue),
        (DeadLetter.error_class, filters.error_class),
        (DeadLetter.status, filters.status),
        (DeadLetter.task_id, filters.task_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if filters.since is not None:
        query = query.where(DeadLetter.recorded_at >= filters.since)
    if filters.until is not None:
        query = query.where(DeadLetter.recorded_at < filters.until)
    return query


def list_letters(
    *, session: Session, filters: DeadLetterFilter, limit: int, offset: int
) -> tuple[list[DeadLetter], int, list[dict[str, Any]]]:
    """A page (newest first), the total, and counts grouped by (task, reason, error class), each group with when
    its first and last letter were recorded."""
    query = _filtered(filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = list(session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit).offset(offset)))
    sub = query.subquery()
    grouped = session.execute(
        select(
            sub.c.task_name,
            sub.c.reason,
            sub.c.error_class,
            func.count(),
            func.min(sub.c.recorded_at),
            func.max(sub.c.recorded_at),
        )
        .group_by(sub.c.task_name, sub.c.reason, sub.c.error_class)
        .order_by(func.count().desc())
    )
    groups = [
        {"task_name": t, "reason": r, "error_class": e, "count": int(c), "first_seen": first, "last_seen": last}
        for t, r, e, c, first, last in grouped
    ]
    return page, total, groups


def ids_matching(*, session: Session, filters: DeadLetterFilter) -> list[int]:
    """Ids of every letter that matches, oldest first (bulk replay order)."""
    sub = _filtered(filters).subquery()
    return list(session.scalars(select(sub.c.id).order_by(sub.c.id)))


def get(*, session: Session, letter_id: int) -> DeadLetter:
    """One letter; DeadLetterNotFound otherwise."""
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise DeadLetterNotFound(letter_id)
    return letter


def latest_for_task(*, session: Session, task_id: str) -> DeadLetter | None:
    """The newest letter of a task id."""
    return session.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id).order_by(DeadLetter.id.desc()))


def link_for_task(*, session: Session, task_id: str) -> dict[str, Any] | None:
    """The newest letter of a task id as the task status links it (id, reason, status, error, url)."""
    letter = latest_for_task(session=session, task_id=task_id)
    if letter is None:
        return None
    return {
        "id": letter.id,
        "reason": letter.reason,
        "status": letter.status,
        "error": letter.error,
        "url": f"/api/v1/tasks/dead-letters/{letter.id}",
    }


def replayable(*, session: Session, letter_id: int) -> DeadLetter:
    """A letter that may be replayed: pending, and a decodable task message; NotReplayable otherwise."""
    letter = get(session=session, letter_id=letter_id)
    if letter.status != Status.pending:
        raise NotReplayable(letter_id, f"it was already {letter.status}")
    if letter.reason is Reason.malformed or not letter.task_id or not letter.task_name or letter.body_base64:
        raise NotReplayable(letter_id, "it is malformed; discard it instead")
    return letter


def mark_replayed(
    *,
    session: Session,
    letter: DeadLetter,
    actor: Principal | str,
    reason: str | None,
    edited_kwargs: bool,
    published_at: datetime | None = None,
) -> DeadLetter:
    """Mark a letter replayed once its message was published again (audited); its run is pending again as of
    `published_at` (taken before the publish) unless the replayed run already got further."""
    letter.status = Status.replayed
    letter.resolved_at = utcnow()
    letter.resolved_by = actor.name if isinstance(actor, Principal) else actor
    letter.resolution_note = reason
    if letter.task_id:
        runs_service.mark_requeued(session=session, task_id=letter.task_id, at=published_at)
    audit_service.record(
        session=session,
        actor=actor,
        action="dead_letter.replay",
        target=f"task:{letter.task_id}",
        reason=reason,
        details={"dead_letter_id": letter.id, "edited_kwargs": edited_kwargs},
    )
    session.flush()
    return letter


def discard(*, session: Session, letter_id: int, actor: Principal | str, reason: str) -> DeadLetter:
    """Mark a pending letter discarded, with the reason; the record itself is kept."""
    letter = get(session=session, letter_id=letter_id)
    if letter.status != Status.pending:
        raise NotReplayable(letter_id, f"it was already {letter.status}")
    letter.status = Status.discarded
    letter.resolved_at = utcnow()
    letter.resolved_by = actor.name if isinstance(actor, Principal) else actor
    letter.resolution_note = reason
    audit_service.record(
        session=session,
        actor=actor,
        action="dead_letter.discard",
        target=f"task:{letter.task_id}" if letter.task_id else f"dead_letter:{letter.id}",
        reason=reason,
        details={"dead_letter_id": letter.id},
    )
    session.flush()
    return letter


def purge(*, session: Session, filters: DeadLetterFilter, actor: Principal | str, reason: str) -> int:
    """Discard every pending letter that matches; returns how many."""
    ids = ids_matching(session=session, filters=DeadLetterFilter(**{**filters.__dict__, "status": Status.pending}))
    for letter_id in ids:
        discard(session=session, letter_id=letter_id, actor=actor, reason=reason)
    return len(ids)


def pending_counts(*, session: Session) -> list[tuple[str, str, int]]:
    """(task, reason, count) of pending letters (for metrics)."""
    rows = session.execute(
        select(DeadLetter.task_name, DeadLetter.reason, func.count())
        .where(DeadLetter.status == Status.pending)
        .group_by(DeadLetter.task_name, DeadLetter.reason)
    )
    return [(str(t or ""), str(r), int(c)) for t, r, c in rows]


def recorded_counts(*, session: Session) -> list[tuple[str, str, int]]:
    """(task, reason, count) of every letter ever recorded (a counter: rows are never deleted)."""
    rows = session.execute(
        select(DeadLetter.task_name, DeadLetter.reason, func.count()).group_by(DeadLetter.task_name, DeadLetter.reason)
    )
    return [(str(t or ""), str(r), int(c)) for t, r, c in rows]


def oldest_pending_at(*, session: Session) -> datetime | None:
    """When the oldest pending letter was recorded."""
    return session.scalar(select(func.min(DeadLetter.recorded_at)).where(DeadLetter.status == Status.pending))
