"""Dead-letter triage: groups and filtered letters, a letter's page, replay one (kwargs editable), discard one."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from app.console.routes import filters
from app.console.session import AdminUserDep, UserDep
from app.console.web import PREFIX, SessionDep, render, see_other
from app.db import unstorable
from app.deadletters import service as deadletters
from app.deadletters.exceptions import NotReplayable
from app.deadletters.models import DeadLetter, Reason, Status
from app.engine import dead_letters
from app.runs import service as runs_service
from app.schema_types import Id

router = APIRouter()

Why = Annotated[str, Form(min_length=1, max_length=500)]


@router.get("/dead-letters", response_class=HTMLResponse)
def list_dead_letters(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Letters grouped by (task, reason, error class), and the filtered letters, newest first, a page at a time."""
    params = request.query_params
    criteria = filters.letter_filter(params)
    start = filters.offset(params)
    items, total, groups = deadletters.list_letters(
        session=session, filters=criteria, limit=filters.PAGE_SIZE, offset=start
    )
    values = filters.form_values(params, filters.LETTER_FIELDS)
    values["status"] = params.get("status", "pending")
    return render(
        request,
        "deadletters.html",
        {
            "active": "dead-letters",
            "items": items,
            "total": total,
            "groups": groups,
            "values": values,
            "offset": start,
            "page_size": filters.PAGE_SIZE,
            "reasons": [r.value for r in Reason],
            "statuses": [s.value for s in Status],
            "flash": _discarded_note(params.get("purged")),
        },
    )


def _discarded_note(count: str | None) -> str | None:
    """What a bulk purge did, from the redirect's `?purged=N`; None without one."""
    if not count or not count.isdigit():
        return None
    return f"Discarded {int(count)} dead letter{'' if int(count) == 1 else 's'}."


def _letter_context(session: Any, letter: DeadLetter) -> dict[str, Any]:
    attempts = runs_service.attempts(session=session, task_id=letter.task_id) if letter.task_id else []
    headers = letter.headers or {}
    return {
        "active": "dead-letters",
        "letter": letter,
        "attempts": attempts,
        "x_death": headers.get("x-death"),
        "headers": {k: v for k, v in headers.items() if k != "x-death"},
        "kwargs_text": json.dumps(letter.kwargs or {}, indent=2, sort_keys=True, ensure_ascii=False),
        "replayable": _replayable(session, letter),
        "run": runs_service.get(session=session, task_id=letter.task_id) if letter.task_id else None,
        "kwargs_error": None,
    }


def _replayable(session: Any, letter: DeadLetter) -> str | None:
    """None when the letter can be replayed, else why not."""
    try:
        deadletters.replayable(session=session, letter_id=letter.id)
    except NotReplayable as exc:
        return exc.message
    return None


@router.get("/dead-letters/{letter_id}", response_class=HTMLResponse)
def show_dead_letter(letter_id: Id, request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Everything recorded about one letter: error, traceback, redacted arguments, routing, x-death, attempts."""
    letter = deadletters.get(session=session, letter_id=letter_id)
    return render(request, "deadletter.html", _letter_context(session, letter))


def parse_kwargs(text: str) -> dict[str, Any]:
    """Edited keyword arguments: a JSON object, or ValueError saying what is wrong (nothing is sent then)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"The keyword arguments are not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(value, dict):
        raise ValueError('The keyword arguments must be a JSON object ({"name": value, ...}).')
    if unstorable(value):
        # The REST API refuses the same (app/api/guards.py): NaN/Infinity no JSON column stores, text no UTF-8
        # encoder takes (an unpaired surrogate escape), or a NUL no SQL text holds.
        raise ValueError(
            "The keyword arguments hold NaN, Infinity, a number beyond a double's range, an unpaired surrogate "
            "escape (\\ud800-\\udfff) or a NUL character; none of them can be recorded."
        )
    return value


@router.post("/dead-letters/{letter_id}/replay", response_model=None)
def replay_dead_letter(
    letter_id: Id,
    request: Request,
    session: SessionDep,
    user: AdminUserDep,
    why: Why,
    kwargs: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    """Publish the letter back under its task id; kwargs replaced only when the form's JSON differs (audited)."""
    letter = deadletters.get(session=session, letter_id=letter_id)
    edited: dict[str, Any] | None = None
    if kwargs.strip():
        try:
            edited = parse_kwargs(kwargs)
        except ValueError as exc:
            context = {**_letter_context(session, letter), "kwargs_text": kwargs, "kwargs_error": str(exc)}
            return render(request, "deadletter.html", context, status_code=422)
        if edited == (letter.kwargs or {}):
            edited = None
    replayed = dead_letters.replay(
        session=session, letter_id=letter_id, actor=user.principal, reason=why, kwargs=edited
    )
    return see_other(f"{PREFIX}/runs/{replayed.task_id}?replayed={letter_id}")


@router.post("/dead-letters/{letter_id}/discard", response_model=None)
def discard_dead_letter(letter_id: Id, session: SessionDep, user: AdminUserDep, why: Why) -> Response:
    """Mark the letter discarded with the reason (the record stays; audited)."""
    deadletters.discard(session=session, letter_id=letter_id, actor=user.principal, reason=why)
    return see_other(f"{PREFIX}/dead-letters/{letter_id}")
