"""The overview: queues per tier, workers, pending dead letters, rates, and charts of the last hour (live)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from app.config import get_settings
from app.console.session import UserDep
from app.console.web import SECURITY_HEADERS, SessionDep, query, render
from app.engine.inspect import Broker
from app.errors import ServiceUnavailable
from app.operations import service as operations
from app.runs.schemas import QueueRead

router = APIRouter()

#: Seconds of history behind the overview's rates.
RATE_WINDOW_S = 300
#: Seconds between the live refreshes of the figures (htmx polling) and of the charts.
REFRESH_S = 5
CHART_REFRESH_S = 30


def _figures(session: Any) -> dict[str, Any]:
    """What the overview shows; the queues part is empty (with a note) while RabbitMQ's management API is down."""
    settings = get_settings()
    try:
        found = operations.overview(session=session, broker=Broker(settings), window_s=RATE_WINDOW_S)
    except ServiceUnavailable as exc:
        return {
            "unavailable": exc.message,
            "queues": [],
            "workers": operations.workers(),
            "paused": {},
            "pausable": operations.PAUSABLE,
        }
    failed = sum(found.counts.get(s, 0) for s in operations.FAILED_STATES)
    # Each rate's tile opens the runs it counted: those states, created since the window's start (UTC, as the
    # runs form's field takes it).
    since = found.since.replace(tzinfo=None).isoformat()
    queues: list[QueueRead] = [q for q in found.queues if not q.name.startswith("delay.")]
    return {
        "unavailable": None,
        "queues": queues,
        "delays": [q for q in found.queues if q.name.startswith("delay.")],
        "workers": found.workers,
        "paused": {p.queue: p for p in found.paused},
        "pausable": operations.PAUSABLE,
        "dead_letters_pending": found.dead_letters_pending,
        "finished_per_minute": found.per_minute,
        "failed_per_minute": round(failed / (RATE_WINDOW_S / 60), 2),
        "window_min": RATE_WINDOW_S // 60,
        "finished_query": query({"state": list(operations.FINISHED_STATES), "since": since}),
        "failed_query": query({"state": list(operations.FAILED_STATES), "since": since}),
    }


@router.get("/", response_class=HTMLResponse)
def show_overview(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The operator's one screen; figures refresh every few seconds, charts every half minute."""
    context = {"active": "overview", "refresh_s": REFRESH_S, "chart_refresh_s": CHART_REFRESH_S}
    return render(request, "overview.html", {**context, **_figures(session)})


@router.get("/overview/live", response_class=HTMLResponse)
def show_overview_figures(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The overview's figures alone, for htmx to swap in."""
    return render(request, "_overview_figures.html", {"refresh_s": REFRESH_S, **_figures(session)})


@router.get("/overview/series.json")
def read_series(session: SessionDep, user: UserDep) -> JSONResponse:
    """Per-minute accepted, finished, failed and in-flight runs over the last hour (the charts' data)."""
    return JSONResponse(operations.series(session=session, window_s=3600), headers=SECURITY_HEADERS)
