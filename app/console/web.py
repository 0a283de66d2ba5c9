"""What every console page shares: the Jinja2 environment (autoescaped), the request's database session, the
security headers, and the answers to a missing session, a refusal and a domain error, as pages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app import web_assets
from app.audit.context import request_session
from app.console.session import ConsoleUser
from app.db import utcnow

HERE = Path(__file__).parent
PREFIX = "/console"
STATIC_URL = f"{PREFIX}/static"
#: Console pages run only their own scripts and the vendored packages, and send nothing anywhere but here.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every value from a task (arguments, errors, tracebacks, results) is escaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates = Jinja2Templates(env=_environment)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0, int((utcnow().replace(tzinfo=UTC) - value.astimezone(UTC)).total_seconds()))
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def query(values: Mapping[str, Any], **changes: Any) -> str:
    """A query string of the non-empty values, with `changes` applied (links to a group, to the next page); a list
    becomes a repeated field (`state=FAILURE&state=DEAD_LETTERED`)."""
    merged = {**values, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "", [])}, doseq=True)


_environment.filters.update(when=_when, ago=_ago, pretty=_pretty, urlquote=lambda v: quote(str(v), safe=""))
_environment.globals.update(
    query=query,
    prefix=PREFIX,
    static=STATIC_URL,
    htmx_js=web_assets.HTMX.url("htmx.min.js"),
    uplot_js=web_assets.UPLOT.url("uPlot.iife.min.js"),
    uplot_css=web_assets.UPLOT.url("uPlot.min.css"),
)


def render(
    request: Request, template: str, context: Mapping[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    """A page or fragment, with the signed-in user (when there is one) and the security headers."""
    user: ConsoleUser | None = getattr(request.state, "console_user", None)
    values = {"user": user, "csrf": user.csrf if user else "", "flash": None, "active": "", **(context or {})}
    response = templates.TemplateResponse(request, template, values, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def see_other(url: str) -> RedirectResponse:
    """Post/redirect/get: after a form, the page to show."""
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


#: The request's session, as the API's (app/audit/context.py).
SessionDep = Annotated[Session, Depends(request_session)]
