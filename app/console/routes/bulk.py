"""Bulk dead-letter actions by filter (a group is a filter): replay, with the dry-run count first and progress
while the paced task runs; purge (discard) with a reason, after the count."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from app.console.routes import filters
from app.console.session import AdminUserDep, UserDep
from app.console.web import PREFIX, SessionDep, query, render, see_other
from app.constants import TERMINAL_STATES
from app.deadletters import service as deadletters
from app.engine import dead_letters, inspect
from app.errors import Unprocessable

router = APIRouter()

Why = Annotated[str, Form(min_length=1, max_length=500)]
#: Letters per second a bulk replay publishes by default (the REST API's default).
DEFAULT_RATE = 20.0
#: The letters per second the form accepts; anything else is refused with a 422 page.
MIN_RATE = 0.1
MAX_RATE = 100.0


def _described(criteria: deadletters.DeadLetterFilter) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in asdict(criteria).items() if v}


def _rate(form: Any) -> float:
    """The form's letters per second (the default when empty); a value out of range is refused, never clamped, so
    the admin does not start a replay at a pace other than the one typed."""
    text = str(form.get("rate_per_s") or "").strip()
    if not text:
        return DEFAULT_RATE
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not MIN_RATE <= rate <= MAX_RATE:  # NaN fails this too
        raise Unprocessable(f"The rate must be a number from {MIN_RATE:g} to {MAX_RATE:g} letters per second.")
    return rate


def _confirm_page(request: Request, session: Any, action: str) -> HTMLResponse:
    """The count of pending letters the filter matches (the dry run), and the form that does it."""
    params = request.query_params
    criteria = filters.letter_filter(params, status_default="pending")
    matched = dead_letters.replay_matching(
        session=session,
        filters=criteria,
        actor=request.state.console_user.principal,
        rate_per_s=DEFAULT_RATE,
        why=None,
        dry_run=True,
        described={},
    ).matched
    values = {k: v for k, v in filters.form_values(params, filters.LETTER_FIELDS).items() if k != "status"}
    return render(
        request,
        "bulk.html",
        {
            "active": "dead-letters",
            "action": action,
            "matched": matched,
            "values": values,
            "rate": DEFAULT_RATE,
            "min_rate": MIN_RATE,
            "max_rate": MAX_RATE,
        },
    )


@router.get("/dead-letters/bulk/replay", response_class=HTMLResponse)
def confirm_bulk_replay(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Dry run: how many pending letters the filter matches, before anything is replayed."""
    return _confirm_page(request, session, "replay")


@router.get("/dead-letters/bulk/purge", response_class=HTMLResponse)
def confirm_purge(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """How many pending letters a purge of this filter would discard, before it does."""
    return _confirm_page(request, session, "purge")


@router.post("/dead-letters/bulk/replay", response_model=None)
async def start_bulk_replay(request: Request, session: SessionDep, user: AdminUserDep, why: Why) -> Response:
    """Replay every pending letter that matches through the paced task (audited with the filter), then follow it."""
    form = await request.form()
    criteria = filters.letter_filter(form, status_default="pending")
    rate = _rate(form)
    done = dead_letters.replay_matching(
        session=session,
        filters=criteria,
        actor=user.principal,
        rate_per_s=rate,
        why=why,
        dry_run=False,
        described=_described(criteria),
    )
    if done.task_id is None:
        return see_other(f"{PREFIX}/dead-letters?{query(filters.form_values(form, filters.LETTER_FIELDS))}")
    return see_other(f"{PREFIX}/dead-letters/bulk/{done.task_id}?matched={done.matched}")


@router.post("/dead-letters/bulk/purge", response_model=None)
async def purge_dead_letters(request: Request, session: SessionDep, user: AdminUserDep, why: Why) -> Response:
    """Discard every pending letter that matches, with the reason (records stay; each discard audited)."""
    form = await request.form()
    criteria = filters.letter_filter(form, status_default="pending")
    discarded = deadletters.purge(session=session, filters=criteria, actor=user.principal, reason=why)
    values = filters.form_values(form, filters.LETTER_FIELDS)
    return see_other(f"{PREFIX}/dead-letters?{query(values, status='discarded', purged=discarded)}")


def _progress(session: Any, task_id: str) -> dict[str, Any]:
    found = inspect.task_status(session=session, task_id=task_id)
    progress = (found.progress if found else None) or {}
    result = found.result if found is not None and isinstance(found.result, dict) else {}
    finished = found is not None and found.state in TERMINAL_STATES
    return {
        "task_id": task_id,
        "state": found.state if found else "PENDING",
        "current": int(result.get("total", 0) if finished else progress.get("current", 0) or 0),
        "total": int(result.get("total", 0) if finished else progress.get("total", 0) or 0),
        "result": result,
        "finished": finished,
        "error": found.error if found else None,
    }


@router.get("/dead-letters/bulk/{task_id}", response_class=HTMLResponse)
def show_bulk_replay(task_id: str, request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A bulk replay's progress, refreshed live until its task finishes."""
    matched = filters.offset({"offset": request.query_params.get("matched")})
    context = {"active": "dead-letters", "matched": matched, **_progress(session, task_id[:64])}
    return render(request, "bulk_progress.html", context)


@router.get("/dead-letters/bulk/{task_id}/progress", response_class=HTMLResponse)
def show_bulk_progress(task_id: str, request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The progress fragment (htmx polls it every second until the task finished)."""
    matched = filters.offset({"offset": request.query_params.get("matched")})
    return render(request, "_bulk_progress.html", {"matched": matched, **_progress(session, task_id[:64])})
