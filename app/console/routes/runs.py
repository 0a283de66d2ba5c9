"""The run history: search, a run's page with its live state (Server-Sent Events), and revoke for admins."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from app.audit import service as audit_service
from app.config import get_settings
from app.console.routes import filters
from app.console.session import AdminUserDep, UserDep
from app.console.web import PREFIX, SECURITY_HEADERS, SessionDep, render, see_other
from app.constants import SETTLED_STATES, TERMINAL_STATES, TaskState
from app.db import session_scope
from app.deadletters import service as deadletters
from app.engine import inspect
from app.errors import NotFound
from app.runs import service as runs_service
from app.runs.schemas import TaskId, TaskRead
from app.runs.status import RUNS_ON

router = APIRouter()


@router.get("/runs", response_class=HTMLResponse, response_model=None)
def list_runs(request: Request, session: SessionDep, user: UserDep) -> Response:
    """The durable history, newest first, filtered by state, task, caller and time; a task id opens its run."""
    params = request.query_params
    task_id = (params.get("task_id") or "").strip()
    if task_id:
        return see_other(f"{PREFIX}/runs/{quote(task_id, safe='')}")
    # Pages go by keyset (`after` the last run shown), so the 1,000th page costs what the first does; `at` only
    # numbers the rows shown.
    after = filters.run_after(params)
    start = filters.offset({"offset": params.get("at")}) if after else filters.offset(params)
    criteria = replace(filters.run_filter(params), after=after)
    items, total = runs_service.list_runs(
        session=session, filters=criteria, limit=filters.PAGE_SIZE, offset=0 if after else start
    )
    last = items[-1] if items else None
    return render(
        request,
        "runs.html",
        {
            "active": "runs",
            "items": items,
            "total": total,
            "values": filters.form_values(params, filters.RUN_FIELDS),
            "offset": start,
            "page_size": filters.PAGE_SIZE,
            "states": [s.value for s in TaskState],
            "older": filters.run_cursor(last.created_at, last.task_id) if last else "",
        },
    )


def _found(session: object, task_id: str) -> TaskRead:
    found = inspect.task_status(session=session, task_id=task_id)  # type: ignore[arg-type]
    if found is None:
        raise NotFound(f"No task {task_id} is known to Courier.")
    return found


@router.get("/runs/{task_id}", response_class=HTMLResponse)
def show_run(task_id: TaskId, request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A run: live state and progress, attempts, timings, result or error, its dead letter; revoke for admins."""
    found = _found(session, task_id)
    replayed = request.query_params.get("replayed")
    return render(
        request,
        "run.html",
        {
            "active": "runs",
            "run": found,
            "row": runs_service.get(session=session, task_id=task_id),
            "attempts": runs_service.attempts(session=session, task_id=task_id),
            "letter": deadletters.latest_for_task(session=session, task_id=task_id),
            "terminal": found.state in TERMINAL_STATES,
            "follow": found.state not in SETTLED_STATES,
            "flash": _flash(replayed, request.query_params.get("revoked")),
        },
    )


def _flash(replayed: str | None, revoked: str | None) -> str | None:
    """What the action that led here did, from its redirect's query (`?replayed=ID`, `?revoked=running`)."""
    if replayed:
        return f"Dead letter {replayed} was replayed; this page follows the run live."
    if revoked == "running":
        return f"Revocation recorded. {RUNS_ON}"
    return None


def _visible(task_id: str) -> TaskRead:
    with session_scope() as session:
        return _found(session, task_id)


@router.get("/runs/{task_id}/events")
async def stream_run(task_id: TaskId, request: Request, user: UserDep) -> StreamingResponse:
    """The run's Server-Sent Events (the API's stream, for a console session): `state` per change, then `end`."""
    first = await run_in_threadpool(_visible, task_id)
    events = inspect.open_status_stream(
        first, key_id=user.principal.key_id, is_disconnected=request.is_disconnected, settings=get_settings()
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
    )


@router.post("/runs/{task_id}/revoke", response_model=None)
def revoke_run(
    task_id: TaskId,
    session: SessionDep,
    user: AdminUserDep,
    why: Annotated[str, Form(min_length=1, max_length=500)],
    terminate: Annotated[bool, Form()] = False,
) -> Response:
    """Revoke durably (with terminate, a running attempt is killed too); audited with the reason (the API's
    call is audited by its HTTP audit, which covers /api only)."""
    done = inspect.revoke(
        session=session, task_id=task_id, terminate=terminate, revoked_by=user.principal.name, reason=why
    )
    audit_service.record(
        session=session,
        actor=user.principal,
        action="task.revoke",
        target=f"task:{task_id}",
        reason=why,
        details={"terminate": terminate, "revoked": done.revoked, "state": str(done.state)},
    )
    return see_other(f"{PREFIX}/runs/{task_id}" + ("?revoked=running" if done.note else ""))
