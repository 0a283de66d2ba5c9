"""Ask Courier's live workers and broker through Celery and RabbitMQ: task results, revoke, inspect (active and
scheduled tasks), remote-control broadcasts, queue depths and purges. The read models and the durable records
are the domains' (app/runs/status.py, app/operations/service.py); this module is their Celery side."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import amqp.exceptions
from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy.orm import Session

from app.config import Settings
from app.constants import DELAY_BUCKETS_S, SETTLED_STATES, TaskState, Tier
from app.db import session_scope
from app.deadletters import service as deadletters
from app.engine import topology
from app.engine.celery_app import celery_app
from app.errors import ServiceUnavailable, TooManyRequests
from app.operations.service import BROADCAST_TIMEOUT_S
from app.rabbitmq import ManagementClient, ManagementError, broker_connection, connect_any
from app.runs import status
from app.runs.schemas import ActiveTask, QueueRead, RevokeRead, ScheduledRead, TaskRead

logger = logging.getLogger(__name__)

#: How long a broadcast (inspect) waits for workers to answer.
INSPECT_TIMEOUT_S = 1.0


def result_meta(task_id: str) -> dict[str, Any]:
    """The result the worker stored for a task, as Celery's result backend decodes it (PENDING when none)."""
    meta: dict[str, Any] = celery_app.backend.get_task_meta(task_id)
    return meta


def task_status(*, session: Session, task_id: str) -> TaskRead | None:
    """One task's status (app/runs/status.py) with its stored result and, once dead-lettered, the link to its
    dead letter; None for an id never seen."""
    found = status.task_status(session=session, task_id=task_id, result_meta=result_meta)
    if found is not None and found.state == TaskState.DEAD_LETTERED:
        found = found.model_copy(update={"dead_letter": deadletters.link_for_task(session=session, task_id=task_id)})
    return found


#: Seconds of silence after which a live-progress stream sends a comment line.
KEEPALIVE_S = 15.0


#: The live-progress streams of each API key open in this process, the API's and the console's together (each polls
#: the database: a few hundred from one key took every pooled connection, then PostgreSQL's own, and the whole service
#: answered 503). A stream leaves its set when its response is done with it, ended, disconnected or never started.
_open_streams: defaultdict[int, weakref.WeakSet[Any]] = defaultdict(weakref.WeakSet)


def open_status_stream(
    first: TaskRead, *, key_id: int, is_disconnected: Callable[[], Awaitable[bool]], settings: Settings
) -> AsyncIterator[str]:
    """`status_events` for a stream key `key_id` opens, or TooManyRequests (429) when that key already holds
    EVENTS_MAX_STREAMS_PER_KEY open in this process."""
    streams = _open_streams[key_id]
    if len(streams) >= settings.events_max_streams_per_key:
        raise TooManyRequests(
            f"This key already holds {len(streams)} live-progress streams open; close one, or poll "
            f"/api/v1/tasks/task/{first.task_id}.",
            details={"limit": settings.events_max_streams_per_key},
        )
    events = status_events(first, is_disconnected=is_disconnected, settings=settings)
    streams.add(events)
    return events


async def status_events(
    first: TaskRead, *, is_disconnected: Callable[[], Awaitable[bool]], settings: Settings
) -> AsyncIterator[str]:
    """Server-Sent Events of one task (the API's stream and the console's run page): poll its state (Redis, then
    SQL) and send a `state` event when it or its progress changed, then `end` once it settled (a FAILURE is followed
    to its DEAD_LETTERED); stop when the
    client leaves or after EVENTS_MAX_DURATION_S."""
    deadline = time.monotonic() + settings.events_max_duration_s
    current: TaskRead | None = first
    last: tuple[object, ...] | None = None
    sent = time.monotonic()
    while current is not None:
        seen = (current.state, current.progress)
        if seen != last:
            last, sent = seen, time.monotonic()
            yield f"event: state\ndata: {current.model_dump_json()}\n\n"
        elif time.monotonic() - sent > KEEPALIVE_S:
            sent = time.monotonic()
            yield ": keep-alive\n\n"  # a comment line: proxies keep an idle stream open
        if current.state in SETTLED_STATES:
            yield f"event: end\ndata: {json.dumps({'task_id': current.task_id, 'state': current.state})}\n\n"
            return
        if time.monotonic() > deadline or await is_disconnected():
            return
        await asyncio.sleep(settings.events_poll_interval_s)
        current = await run_in_threadpool(_read_status, current.task_id)


def _read_status(task_id: str) -> TaskRead | None:
    with session_scope() as session:
        return task_status(session=session, task_id=task_id)


def revoke(*, session: Session, task_id: str, terminate: bool, revoked_by: str, reason: str | None) -> RevokeRead:
    """Revoke durably (SQL, then Redis), mark the run REVOKED, then tell live workers."""
    found = status.revoke(
        session=session,
        task_id=task_id,
        terminate=terminate,
        revoked_by=revoked_by,
        reason=reason,
        result_meta=result_meta,
    )
    if not found.revoked:
        return found
    try:
        celery_app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")
    except Exception as exc:  # the durable record already stops it; the broadcast only speeds up running workers
        # One line, not a traceback: the broker being down is an outage the operator already sees elsewhere.
        logger.warning(
            "Broadcasting the revoke of %s failed (%s: %s); workers will still refuse it.",
            task_id,
            type(exc).__name__,
            exc,
        )
    logger.info("Task %s revoked by %s (terminate=%s).", task_id, revoked_by, terminate)
    return found


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

    now = time.time()

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
            head_message_age_s=_age(live.get(q.name, {}).get("head_message_timestamp"), now),
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


@contextmanager
def _broker_call() -> Iterator[None]:
    """Raise a broker connection dropped in the middle of a call (reset, closed, an AMQP connection error) as
    BrokerUnreachable, the outage the API answers 503 for: kombu wraps only the errors of opening a connection,
    and a pooled one the broker dropped fails on its next write."""
    try:
        yield
    except (OSError, amqp.exceptions.ConnectionError) as exc:
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from exc


def active() -> list[ActiveTask]:
    """Tasks executing now, from a broadcast to live workers."""
    with _broker_call():
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
    with _broker_call():
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


def _age(head_timestamp: Any, now: float) -> float | None:
    """Seconds since a queue's head message was published (None without a timestamp)."""
    if isinstance(head_timestamp, int | float) and head_timestamp > 0:
        return round(max(0.0, now - float(head_timestamp)), 1)
    return None


def _from_ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


class Broker:
    """The operations domain's view of the broker and the workers (app.operations.service.Broker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def broadcast(self, command: str, queue: str) -> list[str]:
        """Send a remote-control command to every worker; the ones that consume the tier act on it."""
        try:
            replies = celery_app.control.broadcast(
                command, arguments={"queue": queue}, reply=True, timeout=BROADCAST_TIMEOUT_S
            )
        except Exception:  # the durable record is written; workers read it again when they (re)start
            logger.warning(
                "Broadcasting %s %s failed; workers apply it when they restart.", command, queue, exc_info=True
            )
            return []
        return sorted(name for reply in replies or [] for name, answer in reply.items() if answer.get("ok"))

    def purge(self, queue: str) -> int:
        """Drop every ready message of `queue`."""
        with broker_connection(self.settings, connect_timeout=5.0) as conn:
            return int(connect_any(conn, self.settings).default_channel.queue_purge(queue) or 0)

    def ready(self, queue: str) -> int:
        """Ready messages of a queue, over AMQP (exact)."""
        with broker_connection(self.settings, connect_timeout=5.0) as conn:
            _, ready, _ = connect_any(conn, self.settings).default_channel.queue_declare(queue, passive=True)
        return int(ready)

    def queues(self) -> list[QueueRead]:
        """Depths of the work, delay and dead-letter queues."""
        return queues(self.settings)
