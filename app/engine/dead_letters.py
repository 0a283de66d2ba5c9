"""Dead letters on the engine side: decode a message off the dead-letter archive queue (Celery's protocol-2 body,
RabbitMQ's x-death, the headers a worker declared, the result Celery stored) into the plain data the dead-letter
store records (app/deadletters/service.py), and publish a replay back to its queue."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from app.access.schemas import Principal
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
from app.deadletters import service as store
from app.deadletters.exceptions import ReplayNotPublished
from app.deadletters.models import DeadLetter, Reason, Status
from app.engine.celery_app import celery_app
from app.engine.guarantees.returns import Unroutable
from app.engine.guarantees.sending import republish
from app.redis_store import get_redis

logger = logging.getLogger(__name__)

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


def failure(result: Any, task: Any) -> store.Failure | None:
    """The error in a stored result as plain data (None when it holds none); `task` is the registered task, if
    any (its autoretry_for says whether the error was a retryable one)."""
    if not isinstance(result, BaseException):
        return None
    retry_for = tuple(getattr(task, "autoretry_for", ()) or ())
    cls, message = _unrebuilt(result) or (type(result), str(result))
    return store.Failure(
        classes=tuple(f"{base.__module__}.{base.__qualname__}" for base in cls.__mro__),
        text=f"{cls.__name__}: {message}",
        error_class=str(getattr(result, "error_class", None) or cls.__name__),
        retryable=bool(retry_for) and issubclass(cls, retry_for),
    )


#: How Celery's `exception_to_python` stands in for an error it cannot rebuild from its stored arguments (one whose
#: constructor takes others, such as SQLAlchemy's): `Exception("<class 'module.Name'>(arguments)")`.
_UNREBUILT = re.compile(r"<class '([\w.]+)'>\((.*)\)", re.S)


def _unrebuilt(result: BaseException) -> tuple[type[BaseException], str] | None:
    """The class and arguments of an error Celery stored but could not rebuild, else None. Without it such a
    letter read `Exception` (grouped and filtered as such), and a retryable one (a database outage) was
    classified `failed` instead of `retries_exhausted`."""
    if type(result) is not Exception or len(result.args) != 1 or not isinstance(result.args[0], str):
        return None
    found = _UNREBUILT.fullmatch(result.args[0])
    if found is None:
        return None
    module, _, name = found.group(1).rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    return cls, found.group(2)


def arrival(incoming: Incoming, *, registered: Mapping[str, Any], meta: Mapping[str, Any]) -> store.Arrival:
    """Decode one dead-lettered message (`meta`: the result Celery stored for its task, if any)."""
    headers = incoming.headers
    task_id = str(headers["id"]) if headers.get("id") else None
    name = str(headers["task"]) if headers.get("task") else None
    decoded = _decode_body(incoming)
    death = _death(headers)
    stored = meta.get("result") if meta.get("status") in (TaskState.FAILURE, TaskState.REVOKED) else None
    args, kwargs = decoded if decoded is not None else (None, None)
    body, body_base64 = _stored_body(incoming, decoded)
    routing_keys = death.get("routing-keys") or []
    return store.Arrival(
        fingerprint=fingerprint(incoming),
        task_id=task_id,
        task_name=name,
        decoded=decoded,
        amqp_reason=death.get("reason"),
        declared=_declared(headers),
        known_task=name is not None and name in registered,
        failure=failure(stored, registered.get(name) if name is not None else None),
        traceback=str(meta.get("traceback")) if meta.get("traceback") else None,
        queue=death.get("queue"),
        exchange=death.get("exchange"),
        routing_key=str(routing_keys[0]) if routing_keys else None,
        retries=_count(headers.get("retries"), 0),
        death_count=_count(death.get("count"), 1),
        first_death_at=_as_datetime(death.get("time")),
        replays=_count(headers.get(REPLAYS_HEADER), 0),
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        properties=jsonable(incoming.properties),
        headers=jsonable(_redacted_headers(headers, args, kwargs)),
        body=body,
        body_base64=body_base64,
    )


def bare_arrival(incoming: Incoming) -> store.Arrival:
    """The last resort for a message whose decoded letter could not be stored: a malformed letter with its raw body
    (base64, for a replay), its task id and name when they are text, and nothing else it carried. Without it, such
    a message stayed at the head of the archive queue, and the recorder retried it forever, recording no letter
    after it."""
    headers = incoming.headers
    seen = b"bare|" + incoming.body + repr(sorted(repr(item) for item in headers.items())).encode()
    return store.Arrival(
        fingerprint=hashlib.sha256(seen).hexdigest(),
        task_id=str(headers["id"]) if isinstance(headers.get("id"), str | int) else None,
        task_name=str(headers["task"]) if isinstance(headers.get("task"), str) else None,
        decoded=None,
        amqp_reason=None,
        declared=None,
        known_task=False,
        failure=None,
        traceback=None,
        queue=None,
        exchange=None,
        routing_key=None,
        retries=0,
        death_count=1,
        first_death_at=None,
        replays=0,
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        properties={},
        headers={},
        body=base64.b64encode(incoming.body).decode(),
        body_base64=True,
    )


def _count(value: Any, default: int) -> int:
    """A count from a header a producer wrote (an AMQP header can hold anything): `default` unless it is a whole
    number an SQL integer column takes."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return count if 0 <= count < 2**31 else default


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


def _redacted_headers(headers: Mapping[str, Any], args: Any, kwargs: Any) -> dict[str, Any]:
    """Headers with secret-looking values redacted, including Celery's argsrepr/kwargsrepr strings."""
    clean = store.redact(headers)
    if args is not None and "argsrepr" in clean:
        clean["argsrepr"] = repr(store.redact(args))
    if kwargs is not None and "kwargsrepr" in clean:
        clean["kwargsrepr"] = repr(store.redact(kwargs))
    return dict(clean)


def _stored_body(incoming: Incoming, decoded: tuple[list[Any], dict[str, Any]] | None) -> tuple[str, bool]:
    """The body to keep for replay: redacted and re-encoded when a secret-looking argument was present."""
    if decoded is not None and store.redact(list(decoded)) != list(decoded):
        full = json.loads(incoming.body)
        full[0], full[1] = store.redact(full[0]), store.redact(full[1])
        return json.dumps(full), False
    try:
        text = incoming.body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(incoming.body).decode(), True
    if "\x00" in text:  # valid UTF-8, but no SQL text column holds a NUL: kept byte for byte as base64 too
        return base64.b64encode(incoming.body).decode(), True
    return text, False


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
    letter = store.replayable(session=session, letter_id=letter_id)
    headers = {k: v for k, v in (letter.headers or {}).items() if not BROKER_HEADER.match(k) and k not in DEATH_HEADERS}
    headers.update({"retries": 0, "expires": None, "eta": None, REPLAYS_HEADER: letter.replays + 1})
    body = (letter.body or "").encode()
    if kwargs is not None:
        full = json.loads(body)
        full[1] = kwargs
        body = json.dumps(full).encode()
    published_at = utcnow()  # (before the publish: the replayed run's own events are all later)
    _publish(letter, headers, body)  # raises ReplayNotPublished (a 503): the caller's transaction rolls back
    _forget_starts(str(letter.task_id), letter.retries)
    return store.mark_replayed(
        session=session,
        letter=letter,
        actor=actor,
        reason=reason,
        edited_kwargs=kwargs is not None,
        published_at=published_at,
    )


def _publish(letter: DeadLetter, headers: dict[str, Any], body: bytes) -> None:
    """Publish mandatory and confirmed; ReplayNotPublished when RabbitMQ returned (could not route) or refused it."""
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


#: Most start counters a replay clears: a letter claiming more retries than this has a header no worker wrote.
FORGET_STARTS_MAX = 1000


def _forget_starts(task_id: str, retries: int) -> None:
    """Drop the worker-lost start counters of the letter's attempts (retries 0 to its own) so a replay gets a fresh
    bound: by name, in one DELETE. A SCAN for them walked every key in Redis (each result, meta and counter of the
    last RESULT_EXPIRES_S), about a second per replay at 70,000 keys, and a day's keys at a steady rate are millions."""
    keys = [STARTS_KEY.format(task_id=task_id, retries=n) for n in range(min(max(retries, 0), FORGET_STARTS_MAX) + 1)]
    get_redis().delete(*keys)


@dataclass(frozen=True)
class BulkReplay:
    """A bulk replay: how many pending letters matched, and the pacing task's dispatch (None for a dry run or no
    match)."""

    matched: int
    task_id: str | None = None
    status_url: str | None = None


def replay_matching(
    *,
    session: Session,
    filters: store.DeadLetterFilter,
    actor: Principal,
    rate_per_s: float,
    why: str | None,
    dry_run: bool,
    described: Mapping[str, Any],
) -> BulkReplay:
    """Replay every pending letter that matches `filters` through the paced low-tier task (audited with the
    filter as `described`); `dry_run` only counts them. The REST API and the console both call this."""
    from app.engine import publish  # (the publisher imports this package's installer; only this function needs it)

    ids = store.ids_matching(session=session, filters=replace(filters, status=Status.pending))
    if dry_run or not ids:
        return BulkReplay(matched=len(ids))
    dispatched = publish.dispatch(
        "deadletters.replay_bulk",
        triggered_by=actor.name,
        kwargs={"letter_ids": ids, "actor": actor.name, "rate_per_s": rate_per_s, "why": why},
    )
    audit_service.record(
        session=session,
        actor=actor,
        action="dead_letter.replay_bulk",
        target="dead_letters",
        reason=why,
        details={"matched": len(ids), "task_id": dispatched.task_id, "filter": dict(described)},
    )
    return BulkReplay(matched=len(ids), task_id=dispatched.task_id, status_url=dispatched.status_url)
