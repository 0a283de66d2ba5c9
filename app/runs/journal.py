"""The run-history journal: each run's start and outcome, appended by the worker to a Redis stream.

The entries have the shape of Celery task events (`type`, `uuid`, `timestamp`, `hostname`, ...), so the
history folds them with the same rules (app/runs/service.py). They ride Redis round trips the worker makes
anyway: the start goes into `before_start`'s pipeline, the outcome into the result-store script
(app/tasks/results.py). Celery's own task events cost three broker messages per task, published from the
worker's consumer loop; the benchmark measured them at about a third of its throughput.

The recorder (app/runs/recorder.py) reads the stream through a consumer group and acknowledges entries only
after their batch is committed to SQL, so entries written while it is down wait for it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from celery import states

from app.constants import DISPATCHED_AT_HEADER, HISTORY_STREAM_MAX_LENGTH, TRIGGERED_BY_HEADER

#: Result states that end or pause a run, and the event type each is journaled as.
STATE_EVENTS = {
    states.SUCCESS: "task-succeeded",
    states.FAILURE: "task-failed",
    states.RETRY: "task-retried",
    states.REVOKED: "task-revoked",
}
#: Longest traceback journaled (the dead-letter record keeps the whole message).
TRACEBACK_MAX_CHARS = 8000
#: Field of a stream entry that holds the JSON event.
FIELD = "e"


def started(*, task_id: str, request: Any) -> str:
    """The JSON entry for an attempt that starts now."""
    event = {
        "type": "task-started",
        "uuid": task_id,
        "timestamp": time.time(),
        "hostname": request.hostname,
        "name": request.task,
        "retries": request.retries or 0,
    }
    # What the publisher recorded, from the message's headers: the recorder then needs no Redis lookup.
    routing_key = (request.delivery_info or {}).get("routing_key")
    if routing_key:
        event["tier"] = routing_key
    for header, field in ((TRIGGERED_BY_HEADER, "triggered_by"), (DISPATCHED_AT_HEADER, "dispatched_at")):
        value = getattr(request, header, None)
        if value is not None:
            event[field] = value
    return _encode(event)


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
    if kind in ("task-failed", "task-retried"):
        event["exception"] = describe_exception(result)
        if traceback:
            event["traceback"] = str(traceback)[-TRACEBACK_MAX_CHARS:]
    return _encode(event)


def describe_exception(result: Any) -> str | None:
    """`Class('message')` of a failure, from the exception or the dict Celery's backend encodes it as."""
    if isinstance(result, BaseException):
        return repr(result)
    if isinstance(result, dict) and result.get("exc_type"):
        message = result.get("exc_message")
        args = message if isinstance(message, list | tuple) else [message]
        return f"{result['exc_type']}({', '.join(repr(a) for a in args)})"
    return None


def decode(fields: dict[str, str]) -> dict[str, Any] | None:
    """The event of one stream entry; None for an entry that is not ours (never fatal for the recorder)."""
    try:
        event = orjson.loads(fields.get(FIELD, ""))
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def xadd_args() -> dict[str, Any]:
    """Keyword arguments of XADD that cap the stream (approximate trimming: O(1))."""
    return {"maxlen": HISTORY_STREAM_MAX_LENGTH, "approximate": True}


def _encode(event: dict[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()
