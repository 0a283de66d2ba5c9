"""Queues and workers: pause and resume a tier with a reason, purge a queue after its confirm step, the live
workers with their queues, concurrency, pool and (loaded apart: a one-second broadcast) active tasks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from app.config import get_settings
from app.console.session import AdminUserDep, UserDep
from app.console.web import PREFIX, SessionDep, render, see_other
from app.engine import inspect
from app.engine.inspect import Broker
from app.errors import BROKER, ServiceUnavailable
from app.operations import service as operations
from app.operations.exceptions import ConfirmationRequired

router = APIRouter()

Reason = Annotated[str, Form(min_length=1, max_length=500)]


@router.get("/queues", response_class=HTMLResponse)
def show_queues(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Every queue with its depth and consumers, paused tiers (who, why), and the live workers."""
    try:
        queues, unavailable = inspect.queues(get_settings()), None
    except ServiceUnavailable as exc:
        queues, unavailable = [], exc.message
    return render(
        request,
        "queues.html",
        {
            "active": "queues",
            "queues": queues,
            "unavailable": unavailable,
            "paused": {p.queue: p for p in operations.paused(session=session)},
            "pausable": operations.PAUSABLE,
            "purgeable": operations.PURGEABLE,
            "workers": operations.workers(),
            "flash": _purged_note(request.query_params.get("purged"), request.query_params.get("queue")),
        },
    )


def _purged_note(count: str | None, queue: str | None) -> str | None:
    """What a confirmed purge did, from the redirect's `?purged=N&queue=Q`; None without (or with a forged) one."""
    if not count or not count.isdigit() or queue not in operations.PURGEABLE:
        return None
    return f"Purged {int(count)} ready message{'' if int(count) == 1 else 's'} of {queue}."


@router.get("/queues/active", response_class=HTMLResponse)
async def show_active(request: Request, user: UserDep) -> HTMLResponse:
    """Tasks executing now, per worker (a one-second broadcast, so the page loads it apart)."""
    try:
        active: list[Any] = await run_in_threadpool(inspect.active)
        error = None
    except ServiceUnavailable as exc:
        active, error = [], exc.message
    except BROKER.errors:
        active, error = [], "The message broker is unreachable, so the workers could not be asked."
    return render(request, "_active.html", {"tasks": active, "error": error})


@router.post("/queues/{name}/pause", response_model=None)
def pause_queue(name: str, session: SessionDep, user: AdminUserDep, reason: Reason) -> Response:
    """Stop every worker consuming the tier until it is resumed, across restarts (audited with the reason)."""
    operations.pause(session=session, queue=name, actor=user.principal, reason=reason, broker=Broker(get_settings()))
    return see_other(f"{PREFIX}/queues#queue-{name}")


@router.post("/queues/{name}/resume", response_model=None)
def resume_queue(name: str, session: SessionDep, user: AdminUserDep, reason: Reason) -> Response:
    """Let the tier's workers consume it again (audited with the reason)."""
    operations.resume(session=session, queue=name, actor=user.principal, reason=reason, broker=Broker(get_settings()))
    return see_other(f"{PREFIX}/queues#queue-{name}")


@router.post("/queues/{name}/purge", response_model=None)
def purge_queue(
    name: str,
    request: Request,
    session: SessionDep,
    user: AdminUserDep,
    reason: Reason,
    confirm_token: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Purge in the API's two steps: the first answer shows how many messages go and asks to confirm; the
    confirmed one (its single-use token, for this queue and user) drops them (audited)."""
    broker = Broker(get_settings())
    if not confirm_token:
        try:
            operations.purge_token(queue=name, actor=user.principal, broker=broker)
        except ConfirmationRequired as exc:
            details = exc.details or {}
            return render(
                request,
                "purge_confirm.html",
                {"active": "queues", "queue": name, "reason": reason, **details},
            )  # a page that asks a question, not a failure: a 409 would be an error in the browser's console
    dropped = operations.confirm_purge(
        session=session, queue=name, actor=user.principal, token=confirm_token, reason=reason, broker=broker
    )
    return see_other(f"{PREFIX}/queues?purged={dropped}&queue={name}#queue-{name}")
