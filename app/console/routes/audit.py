"""The audit trail: admin actions (and every other entry), filtered, with the hash chain's verification."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.audit import archive
from app.audit import service as audit_service
from app.config import get_settings
from app.console.routes import filters
from app.console.session import UserDep
from app.console.web import SessionDep, render

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


@router.get("/audit/verification", response_class=HTMLResponse)
def show_verification(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Walk the whole chain (archives, then SQL) and show whether it holds, or its first broken link."""
    found = archive.verify_all(session=session, settings=get_settings())
    return render(request, "_verification.html", {"v": found})
