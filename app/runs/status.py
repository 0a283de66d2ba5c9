"""Task status, the read model: what the publisher wrote (Redis), the result the worker stored (read by the
caller from the result backend: app/engine/inspect.py) and the durable history (SQL), merged into one answer;
and the durable half of a revoke."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.constants import TASK_META_KEY, TaskState
from app.redis_store import get_redis
from app.runs import revocations
from app.runs import service as runs_service
from app.runs.schemas import RevokeRead, TaskRead


def task_meta(task_id: str) -> dict[str, str]:
    """What the publisher wrote about a task (name, tier, triggered_by); empty once expired."""
    meta: dict[str, str] = get_redis().hgetall(TASK_META_KEY.format(task_id=task_id))  # type: ignore[assignment]
    return meta


def task_status(*, session: Session, task_id: str, result_meta: Callable[[str], dict[str, Any]]) -> TaskRead | None:
    """Merge the live result (`result_meta(task_id)`: what the worker stored, as the result backend decodes it)
    with the durable history (SQL); None for an id never seen. A dead-lettered task's `dead_letter` link is the
    caller's to add (the dead-letter store records into the run history, so the history does not read it)."""
    meta = task_meta(task_id)
    run = runs_service.get(session=session, task_id=task_id)
    backend = result_meta(task_id)
    backend_state = str(backend.get("status") or TaskState.PENDING)
    if not meta and run is None and backend_state == TaskState.PENDING:
        return None
    state: str = backend_state
    stale = run is not None and _requeued_after(run.state, run.event_at, backend)
    if stale:  # a replayed dead letter: its old FAILURE is not its state any more, the history's is
        backend_state = TaskState.PENDING
        backend = {}
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
    )


def owner_of(*, session: Session, task_id: str) -> str | None:
    """The key name that dispatched a task, from Redis or the history."""
    meta = task_meta(task_id)
    if meta.get("triggered_by"):
        return meta["triggered_by"]
    run = runs_service.get(session=session, task_id=task_id)
    return run.triggered_by if run is not None else None


def _requeued_after(run_state: str, run_changed_at: datetime | None, backend: dict[str, Any]) -> bool:
    """Whether the stored result is a FAILURE from before the history last changed to a state that is not final:
    the task was published again since (a replay marks its run PENDING), so that failure is history."""
    if backend.get("status") != TaskState.FAILURE or run_changed_at is None:
        return False
    if run_state not in (TaskState.PENDING, TaskState.RECEIVED, TaskState.STARTED, TaskState.RETRY):
        return False
    done = backend.get("date_done")
    if isinstance(done, str):
        try:
            done = datetime.fromisoformat(done)
        except ValueError:
            return False
    if not isinstance(done, datetime):
        return False
    done = done if done.tzinfo else done.replace(tzinfo=UTC)
    changed = run_changed_at if run_changed_at.tzinfo else run_changed_at.replace(tzinfo=UTC)
    return changed > done


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


def revoke(
    *,
    session: Session,
    task_id: str,
    terminate: bool,
    revoked_by: str,
    reason: str | None,
    result_meta: Callable[[str], dict[str, Any]],
) -> RevokeRead:
    """Revoke durably (SQL, then Redis) and mark the run REVOKED; live workers are told by the caller
    (app/engine/inspect.py) when `revoked` is true. `result_meta` reads what the worker stored, as in `task_status`."""
    meta = task_meta(task_id)
    run = runs_service.get(session=session, task_id=task_id)
    if run is not None and run.state in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED):
        return RevokeRead(task_id=task_id, revoked=False, terminate=terminate, state=run.state)
    revocations.record(session=session, task_id=task_id, revoked_by=revoked_by, terminate=terminate, reason=reason)
    if _running(run, task_id, result_meta) and not terminate:
        # Celery stops a running attempt only when told to terminate it: this one runs to its end, and the history
        # keeps following it (it said REVOKED at once, then stayed REVOKED with the result of a run that succeeded).
        return RevokeRead(task_id=task_id, revoked=True, terminate=False, state=TaskState.STARTED, note=RUNS_ON)
    runs_service.mark_revoked(session=session, task_id=task_id, name=meta.get("name"), revoked_by=revoked_by, meta=meta)
    return RevokeRead(task_id=task_id, revoked=True, terminate=terminate, state=TaskState.REVOKED)


def _running(run: Any, task_id: str, result_meta: Callable[[str], dict[str, Any]]) -> bool:
    """Whether an attempt of the task is running now. The history says so once the recorder has written the start;
    before that (up to a flush interval after it began) the start counters in Redis do: an attempt that passed its
    start check runs unless the worker has since stored its end (a success, a failure, or the RETRY of that very
    attempt, whose next one the revocation will stop)."""
    if run is not None and run.state == TaskState.STARTED:
        return True
    stored = result_meta(task_id)
    # The attempt after the last one known to have ended in a retry is the latest that can have started.
    latest = max(int(stored.get("retries") or 0), (run.attempts or 0) if run is not None else 0) + 1
    attempt = revocations.last_started_attempt(task_id, upto=latest)
    if attempt is None:
        return False
    ended = stored.get("status") in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED)
    retrying = stored.get("status") == TaskState.RETRY and int(stored.get("retries") or 0) >= attempt
    return not (ended or retrying)


#: What a revoke without terminate tells about a running task.
RUNS_ON = (
    "The task is running: without terminate it runs to its end. The revoke only keeps any later attempt (a retry) "
    "from starting; revoke it with terminate to stop it now."
)
