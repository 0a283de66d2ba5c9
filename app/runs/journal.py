"""The run-history journal: each run's start and outcome, appended by the worker to a Redis stream.

The entries have the shape of Celery task events (`type`, `uuid`, `timestamp`, `hostname`, ...), so the
history folds them with the same rules (app/runs/service.py). They ride Redis round trips the worker makes
anyway: an outcome rides the result-store script (app/engine/guarantees/results.py), and carries the run's start
with it. A run still going after START_ENTRY_AFTER_S also gets a start entry of its own, written by the worker's main
process (app/engine/speed/pool.py), so the history shows it running. A short run is thus one entry, not two: the
recorder's work per run was mostly per entry. Celery's own task events cost three broker messages per task,
published from the worker's consumer loop, a large share of its work per task.

The recorder (app/recorder.py) reads the stream through a consumer group and acknowledges entries only
after their batch is committed to SQL, so entries written while it is down wait for it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.constants import DISPATCHED_AT_HEADER, HISTORY_STREAM_MAX_LENGTH, TRIGGERED_BY_HEADER, TaskState

#: Result states that end or pause a run, and the event type each is journaled as.
STATE_EVENTS = {
    TaskState.SUCCESS.value: "task-succeeded",
    TaskState.FAILURE.value: "task-failed",
    TaskState.RETRY.value: "task-retried",
    TaskState.REVOKED.value: "task-revoked",
}
#: Longest traceback journaled (the dead-letter record keeps the whole message).
TRACEBACK_MAX_CHARS = 8000
#: Field of a stream entry that holds the JSON event.
FIELD = "e"
#: A run still going this many seconds after it started gets a start entry of its own.
START_ENTRY_AFTER_S = 0.5
#: Key of an outcome entry that holds its run's start event.
START_FIELD = "start"


def started(*, task_id: str, request: Any) -> dict[str, Any]:
    """The start event of the attempt a task request describes (in the worker child), started now."""
    return start_event(
        task_id=task_id,
        at=time.time(),
        name=request.task,
        retries=request.retries or 0,
        hostname=request.hostname,
        routing_key=(request.delivery_info or {}).get("routing_key"),
        headers={h: getattr(request, h, None) for h in (TRIGGERED_BY_HEADER, DISPATCHED_AT_HEADER)},
    )


def start_event(
    *, task_id: str, at: float, name: str, retries: int, hostname: str, routing_key: str | None, headers: Any
) -> dict[str, Any]:
    """A `task-started` event; `headers` are the message's (what the publisher recorded, so the recorder needs no
    Redis lookup to attribute the run)."""
    event: dict[str, Any] = {
        "type": "task-started",
        "uuid": task_id,
        "timestamp": at,
        "hostname": hostname,
        "name": name,
        "retries": retries,
    }
    if routing_key:
        event["tier"] = routing_key
    for header, field in ((TRIGGERED_BY_HEADER, "triggered_by"), (DISPATCHED_AT_HEADER, "dispatched_at")):
        value = headers.get(header)
        if value is not None:
            event[field] = value
    return event


def encode(event: dict[str, Any]) -> str:
    """The JSON of a stream entry."""
    return orjson.dumps(event, default=str).decode()


def outcome(*, task_id: str, state: str, result: Any, traceback: Any, request: Any) -> str | None:
    """The JSON entry for a stored result, or None for a state that is not an outcome (PROGRESS, STARTED)."""
    kind = STATE_EVENTS.get(state)
    if kind is None:
        return None
    event: dict[str, Any] = {"type": kind, "uuid": task_id, "timestamp": time.time()}
    if request is not None:
        event["hostname"] = getattr(request, "hostname", None)
        event["name"] = getattr(request, "task", None)
        event["retries"] = getattr(request, "retries", None) or 0
        began = getattr(request, "courier_started", None)
        if kind == "task-succeeded" and began is not None:
            event["runtime"] = round(time.monotonic() - began, 6)
        start = getattr(request, "courier_start_event", None)
        if start is not None:
            event[START_FIELD] = start
    if kind in ("task-failed", "task-retried"):
        event["exception"] = describe_exception(result)
        if traceback:
            event["traceback"] = str(traceback)[-TRACEBACK_MAX_CHARS:]
    return encode(event)


def describe_exception(result: Any) -> str | None:
    """`Class('message')` of a failure, from the exception or the dict Celery's backend encodes it as."""
    if isinstance(result, BaseException):
        return repr(result)
    if isinstance(result, dict) and result.get("exc_type"):
        message = result.get("exc_message")
        args = message if isinstance(message, list | tuple) else [message]
        return f"{result['exc_type']}({', '.join(repr(a) for a in args)})"
    return None


def decode(fields: dict[str, str]) -> list[dict[str, Any]]:
    """The events of one stream entry: an outcome's start (when it carries one), then the entry's own event.
    An entry that is not ours gives none (never fatal for the recorder)."""
    try:
        event = orjson.loads(fields.get(FIELD, ""))
    except orjson.JSONDecodeError:
        return []
    if not isinstance(event, dict):
        return []
    start = event.pop(START_FIELD, None)
    return [start, event] if isinstance(start, dict) else [event]


def xadd_args() -> dict[str, Any]:
    """Keyword arguments of XADD that cap the stream (approximate trimming: O(1))."""
    return {"maxlen": HISTORY_STREAM_MAX_LENGTH, "approximate": True}
