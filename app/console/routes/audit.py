"""The audit trail: admin actions (and every other entry), filtered, with the hash chain's verification."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from app.audit import archive
from app.audit import service as audit_service
from app.audit.service import Verification
from app.config import get_settings
from app.console.routes import filters
from app.console.session import UserDep
from app.console.web import SessionDep, render
from app.db import utcnow

router = APIRouter()

AUDIT_FIELDS = ("actor", "action", "target", "outcome", "since", "until")


@router.get("/audit", response_class=HTMLResponse)
def list_audit(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Entries newest first; `action` may end in `*` (a prefix: `dead_letter.*`). The chain is verified apart."""
    params = request.query_params
    values = filters.form_values(params, AUDIT_FIELDS)
    criteria = audit_service.EventFilter(
        actor=values["actor"] or None,
        action=values["action"] or None,
        target=values["target"] or None,
        outcome=values["outcome"] or None,
        since=filters.letter_filter({"since": values["since"]}).since,
        until=filters.letter_filter({"until": values["until"]}).until,
    )
    start = filters.offset(params)
    items, total = audit_service.list_events(session=session, filters=criteria, limit=filters.PAGE_SIZE, offset=start)
    return render(
        request,
        "audit.html",
        {
            "active": "audit",
            "items": items,
            "total": total,
            "values": values,
            "offset": start,
            "page_size": filters.PAGE_SIZE,
        },
    )


@dataclass(frozen=True)
class Walk:
    """One walk of the chain: its result, when it finished (wall clock, shown; monotonic) and how long it took."""

    result: Verification
    at: datetime
    done: float
    took_s: float


class SharedWalk:
    """One walk of the whole chain at a time in this process, its result shared.

    A walk costs about 3 s of CPU per 100,000 entries, and every audit page a viewer loads asks for one: six loads at
    once kept both cores of a 2-core host busy for 29 s, and a reloading viewer could keep them so. Here a page asked
    for while a walk runs waits for it and shows its result, and so does one asked for soon after: for REUSE_FACTOR
    times as long as the walk took, and at least REUSE_MIN_S (the page says when the walk was made).
    """

    REUSE_MIN_S = 5.0
    REUSE_FACTOR = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Walk | None = None

    def get(self, session: Session) -> Walk:
        """The latest walk's result if it is recent enough, else a new walk's."""
        with self._lock:
            last = self._last
            if last is not None:
                fresh_for = max(self.REUSE_MIN_S, self.REUSE_FACTOR * last.took_s)
                if time.monotonic() - last.done < fresh_for:
                    return last
            started = time.monotonic()
            result = archive.verify_all(session=session, settings=get_settings())
            done = time.monotonic()
            self._last = Walk(result=result, at=utcnow(), done=done, took_s=done - started)
            return self._last


_walks = SharedWalk()


@router.get("/audit/verification", response_class=HTMLResponse)
def show_verification(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Walk the whole chain (archives, then SQL) and show whether it holds, or its first broken link; a walk made a
    moment ago by another page is shown instead of a new one (SharedWalk)."""
    walk = _walks.get(session)
    return render(request, "_verification.html", {"v": walk.result, "at": walk.at})
