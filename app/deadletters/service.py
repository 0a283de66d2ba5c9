"""Record dead-lettered messages with their reason, list them, replay or discard them."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.access.service import Principal
from app.audit import service as audit_service
from app.constants import (
    DEAD_ERROR_CLASS_HEADER,
    DEAD_ERROR_HEADER,
    DEAD_EXCHANGE_HEADER,
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    OUTAGE_RETRIES_HEADER,
    STARTS_KEY,
    TASK_EXCHANGE,
    TaskState,
    Tier,
)
from app.db import utcnow
from app.deadletters.exceptions import DeadLetterNotFound, NotReplayable, ReplayNotPublished
from app.deadletters.models import DeadLetter, Reason, Status
from app.runs.models import TaskRun

logger = logging.getLogger(__name__)

#: Argument names whose values are never stored (product rule 6: secrets never travel; this is the backstop).
SECRET_NAME = re.compile(r"pass(word)?|secret|token|api[_-]?key|authorization|credential|(^|_)(otp|pin|code)$", re.I)
REDACTED = "[redacted]"
#: Headers RabbitMQ owns; replay strips them (republishing x-death is an anti-pattern since RabbitMQ 3.13).
BROKER_HEADER = re.compile(r"^x-(death|first-death-|last-death-)")
#: Our own replay counter (no `x-` prefix: those belong to the broker).
REPLAYS_HEADER = "courier-replays"
#: Headers a worker set about one death or one run (reason, outage retries); a replay starts without them.
DEATH_HEADERS = (
    DEAD_REASON_HEADER,
    DEAD_ERROR_CLASS_HEADER,
    DEAD_ERROR_HEADER,
    DEAD_QUEUE_HEADER,
    DEAD_EXCHANGE_HEADER,
    OUTAGE_RETRIES_HEADER,
)
#: Redis errors that mean an outage (BusyLoadingError is a ConnectionError), as app/engine/guarantees/outages.py
# counts them.
REDIS_OUTAGE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)
TRACEBACK_MAX_CHARS = 8000


def redact(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, Mapping):
        return {k: REDACTED if SECRET_NAME.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """AMQP header values (datetimes, bytes, decimals) as JSON values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class Incoming:
    """A message as the recorder received it from the dead-letter archive queue."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]
    properties: dict[str, Any]


def _decode_body(incoming: Incoming) -> tuple[list[Any], dict[str, Any]] | None:
    """(args, kwargs) of a Celery protocol-2 JSON body, or None when it is not one."""
    if incoming.content_type != "application/json":
        return None
    try:
        decoded = json.loads(incoming.body.decode(incoming.content_encoding or "utf-8"))
    except (ValueError, UnicodeDecodeError, LookupError):
        return None
    if (
        isinstance(decoded, list)
        and len(decoded) >= 2
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
    ):
        return decoded[0], decoded[1]
    return None


def classify(
    *,
    amqp_reason: str | None,
    task_id: str | None,
    name: str | None,
    decoded: bool,
    registered: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> tuple[Reason, BaseException | None]:
    """Why a message was dead-lettered, from RabbitMQ's x-death reason and the result Celery stored."""
    if not decoded or not task_id or not name:
        return Reason.malformed, None
    if amqp_reason == "expired":
        return Reason.expired, None
    if amqp_reason == "maxlen":
        return Reason.queue_full, None
    if amqp_reason == "delivery_limit":
        return Reason.worker_lost, None
    if name not in registered:
        return Reason.unknown_task, None
    exc = meta.get("result") if meta.get("status") in (TaskState.FAILURE, TaskState.REVOKED) else None
    if not isinstance(exc, BaseException):
        # Celery rejected it before running it (content type, arguments): nothing was stored.
        return Reason.malformed, None
    if isinstance(exc, TaskRevokedError):
        return Reason.expired, exc
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return Reason.timeout, exc
    if type(exc).__name__ in ("WorkerLostError", "WorkerKilledRepeatedly"):
        return Reason.worker_lost, exc
    if type(exc).__name__ == "NotRegistered":
        return Reason.unknown_task, exc
    if type(exc).__name__ == "Unroutable":
        return Reason.unroutable, exc
    if type(exc).__name__ == "InfraUnavailable" or isinstance(exc, REDIS_OUTAGE):
        return Reason.infra_unavailable, exc
    retry_for = getattr(registered[name], "autoretry_for", ()) or ()
    if retry_for and isinstance(exc, tuple(retry_for)):
        return Reason.retries_exhausted, exc
    return Reason.failed, exc


def _death(headers: Mapping[str, Any]) -> dict[str, Any]:
    """RabbitMQ's newest x-death entry; for a message a worker dead-lettered by publishing it (no x-death), the
    same fields from the worker's headers."""
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], Mapping):
        return dict(deaths[0])
    if headers.get(DEAD_REASON_HEADER):
        queue = headers.get(DEAD_QUEUE_HEADER)
        return {"queue": queue, "exchange": headers.get(DEAD_EXCHANGE_HEADER), "routing-keys": [queue] if queue else []}
    return {}


def _declared(headers: Mapping[str, Any]) -> tuple[Reason, str | None, str | None] | None:
    """(reason, error class, error) a worker declared in headers when it dead-lettered the message itself."""
    try:
        reason = Reason(str(headers.get(DEAD_REASON_HEADER)))
    except ValueError:
        return None
    error_class, error = headers.get(DEAD_ERROR_CLASS_HEADER), headers.get(DEAD_ERROR_HEADER)
    return reason, str(error_class) if error_class else None, str(error)[:2000] if error else None


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def fingerprint(incoming: Incoming) -> str:
    """Identity of one death of one message: the same message redelivered to the recorder is recorded once."""
    death = _death(incoming.headers)
    parts = [
        str(incoming.headers.get("id") or hashlib.sha256(incoming.body).hexdigest()),
        str(incoming.headers.get("retries") or 0),
        str(incoming.headers.get(REPLAYS_HEADER) or 0),
        str(incoming.headers.get(OUTAGE_RETRIES_HEADER) or 0),
        str(death.get("queue")),
        str(death.get("count")),
        str(death.get("time")),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def record(
    *, session: Session, incoming: Incoming, registered: Mapping[str, Any], meta: Mapping[str, Any]
) -> DeadLetter | None:
    """Store one dead-lettered message; None when this exact death was recorded already."""
    digest = fingerprint(incoming)
    if session.scalar(select(DeadLetter.id).where(DeadLetter.fingerprint == digest)) is not None:
        return None
    headers = incoming.headers
    task_id = str(headers["id"]) if headers.get("id") else None
    name = str(headers["task"]) if headers.get("task") else None
    decoded = _decode_body(incoming)
    death = _death(headers)
    reason, exc = classify(
        amqp_reason=death.get("reason"),
        task_id=task_id,
        name=name,
        decoded=decoded is not None,
        registered=registered,
        meta=meta,
    )
    error_class = _error_class(exc)
    error = _error_text(reason, exc, name)
    declared = _declared(headers) if decoded is not None and task_id and name else None
    if declared is not None:  # the worker said why: its result backend may not know (it was the one down)
        reason, error_class, error = declared
    args, kwargs = decoded if decoded is not None else (None, None)
    body, body_base64 = _stored_body(incoming, decoded)
    routing_keys = death.get("routing-keys") or []
    letter = DeadLetter(
        fingerprint=digest,
        task_id=task_id,
        task_name=name,
        reason=reason,
        error_class=error_class,
        error=error,
        traceback=(str(meta.get("traceback"))[-TRACEBACK_MAX_CHARS:] if meta.get("traceback") else None),
        args=redact(args) if args is not None else None,
        kwargs=redact(kwargs) if kwargs is not None else None,
        queue=death.get("queue"),
        exchange=death.get("exchange"),
        routing_key=str(routing_keys[0]) if routing_keys else None,
        retries=int(headers.get("retries") or 0),
        death_count=int(death.get("count") or 1),
        # x-death keeps the time of the first death per (queue, reason); this recording is the latest one.
        first_death_at=_as_datetime(death.get("time")),
        last_death_at=utcnow(),
        replays=int(headers.get(REPLAYS_HEADER) or 0),
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        properties=jsonable(incoming.properties),
        headers=jsonable(_redacted_headers(headers, args, kwargs)),
        body=body,
        body_base64=body_base64,
    )
    session.add(letter)
    if task_id:
        _mark_run(session, task_id, name, reason, letter.error)
    session.flush()
    logger.info("Recorded dead letter %s: %s[%s], reason %s.", letter.id, name, task_id, reason.value)
    _emit_dead_lettered(session, letter)
    return letter


def _emit_dead_lettered(session: Session, letter: DeadLetter) -> None:
    """Tell webhook subscribers (`task.dead_lettered`), in the recording's transaction. A dead-lettered webhook
    delivery emits nothing: an endpoint that fails could otherwise feed itself an endless stream of events."""
    from app.integrations import events  # the integrations domain reads dead letters too

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


def _redacted_headers(headers: Mapping[str, Any], args: Any, kwargs: Any) -> dict[str, Any]:
    """Headers with secret-looking values redacted, including Celery's argsrepr/kwargsrepr strings."""
    clean = redact(headers)
    if args is not None and "argsrepr" in clean:
        clean["argsrepr"] = repr(redact(args))
    if kwargs is not None and "kwargsrepr" in clean:
        clean["kwargsrepr"] = repr(redact(kwargs))
    return dict(clean)


def _stored_body(incoming: Incoming, decoded: tuple[list[Any], dict[str, Any]] | None) -> tuple[str, bool]:
    """The body to keep for replay: redacted and re-encoded when a secret-looking argument was present."""
    if decoded is not None and redact(list(decoded)) != list(decoded):
        full = json.loads(incoming.body)
        full[0], full[1] = redact(full[0]), redact(full[1])
        return json.dumps(full), False
    try:
        return incoming.body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(incoming.body).decode(), True


def _error_class(exc: BaseException | None) -> str | None:
    """The error's class; for an outage the worker reported (InfraUnavailable), the Redis error's."""
    if exc is None:
        return None
    return str(getattr(exc, "error_class", None) or type(exc).__name__)


def _error_text(reason: Reason, exc: BaseException | None, name: str | None) -> str | None:
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"[:2000]
    return {
        Reason.malformed: "The message could not be decoded as a Celery task (body, content type or headers).",
        Reason.unknown_task: f"No task named {name!r} is registered.",
        Reason.expired: "The message expired before a worker ran it.",
        Reason.queue_full: "The queue's length cap pushed the message out.",
        Reason.worker_lost: "The broker's delivery limit was reached: the message kept killing its worker.",
    }.get(reason)


def _mark_run(session: Session, task_id: str, name: str | None, reason: Reason, error: str | None) -> None:
    now = utcnow()
    run = session.get(TaskRun, task_id)
    if run is None:
        session.add(
            TaskRun(
                task_id=task_id,
                name=name or "",
                state=TaskState.DEAD_LETTERED,
                attempts=0,
                error=f"{reason.value}: {error}" if error else reason.value,
                finished_at=now,
                event_at=now,
            )
        )
    else:
        run.state = TaskState.DEAD_LETTERED
        run.error = (f"{reason.value}: {error}" if error else reason.value)[:2000]
        run.event_at = max(run.event_at or now, now)


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
    """A page (newest first), the total, and counts grouped by (task, reason, error class)."""
    query = _filtered(filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = list(session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit).offset(offset)))
    sub = query.subquery()
    grouped = session.execute(
        select(sub.c.task_name, sub.c.reason, sub.c.error_class, func.count())
        .group_by(sub.c.task_name, sub.c.reason, sub.c.error_class)
        .order_by(func.count().desc())
    )
    groups = [{"task_name": t, "reason": r, "error_class": e, "count": int(c)} for t, r, e, c in grouped]
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


def replay(
    *,
    session: Session,
    letter_id: int,
    actor: Principal | str,
    reason: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> DeadLetter:
    """Publish a letter back to its original queue: same task id, fresh retry budget, broker headers stripped.

    The publish is confirmed before the letter is marked replayed; a failed publish leaves it pending.
    """
    letter = get(session=session, letter_id=letter_id)
    if letter.status != Status.pending:
        raise NotReplayable(letter_id, f"it was already {letter.status}")
    if letter.reason is Reason.malformed or not letter.task_id or not letter.task_name or letter.body_base64:
        raise NotReplayable(letter_id, "it is malformed; discard it instead")
    headers = {k: v for k, v in (letter.headers or {}).items() if not BROKER_HEADER.match(k) and k not in DEATH_HEADERS}
    headers.update({"retries": 0, "expires": None, "eta": None, REPLAYS_HEADER: letter.replays + 1})
    body = (letter.body or "").encode()
    if kwargs is not None:
        full = json.loads(body)
        full[1] = kwargs
        body = json.dumps(full).encode()
    _publish(letter, headers, body)  # raises ReplayNotPublished (a 503): the caller's transaction rolls back
    _forget_starts(letter.task_id)
    letter.status = Status.replayed
    letter.resolved_at = utcnow()
    letter.resolved_by = actor.name if isinstance(actor, Principal) else actor
    letter.resolution_note = reason
    run = session.get(TaskRun, letter.task_id)
    if run is not None:
        run.state = TaskState.PENDING
        run.event_at = utcnow()
        run.error = None
    audit_service.record(
        session=session,
        actor=actor,
        action="dead_letter.replay",
        target=f"task:{letter.task_id}",
        reason=reason,
        details={"dead_letter_id": letter.id, "edited_kwargs": kwargs is not None},
    )
    session.flush()
    return letter


def _publish(letter: DeadLetter, headers: dict[str, Any], body: bytes) -> None:
    """Publish mandatory and confirmed; ReplayNotPublished when RabbitMQ returned (could not route) or refused it."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    from app.engine.celery_app import celery_app
    from app.engine.guarantees.sending import republish
    from app.engine.speed.amqp_transport import Unroutable

    properties = letter.properties or {}
    queue = letter.queue if letter.queue in Tier.__members__ else None
    exchange = TASK_EXCHANGE if queue else (letter.exchange or "")
    routing_key = queue or letter.routing_key or letter.queue or ""
    try:
        with celery_app.producer_or_acquire() as producer:
            republish(
                producer,
                body,
                exchange=exchange,
                routing_key=routing_key,
                headers=headers,
                content_type=letter.content_type,
                content_encoding=letter.content_encoding or "utf-8",
                properties=properties,
                fallback_correlation_id=letter.task_id,
            )
    except Unroutable as exc:
        logger.warning("Replay of dead letter %s was returned by RabbitMQ: %s", letter.id, exc)
        raise ReplayNotPublished(
            letter.id, f"RabbitMQ cannot route to queue {routing_key!r} (exchange {exchange!r}): missing or unbound"
        ) from exc
    except (KombuError, AMQPError, OSError, TimeoutError) as exc:
        logger.warning("Replay of dead letter %s failed: %r.", letter.id, exc)
        raise ReplayNotPublished(letter.id, "the message broker did not confirm it") from exc


def _forget_starts(task_id: str) -> None:
    """Drop the worker-lost start counters so a replay gets a fresh bound."""
    from app.redis_store import get_redis

    redis = get_redis()
    keys = list(redis.scan_iter(match=STARTS_KEY.format(task_id=task_id, retries="*"), count=100))
    if keys:
        redis.delete(*keys)


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
