"""Serve the console: its routes, its own static files, and its answers (a missing session, a refusal, a domain
error, an invalid form) as pages."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from app.audit import service as audit_service
from app.console.routes import router
from app.console.session import ConsoleForbidden, SignInRequired
from app.console.web import HERE, PREFIX, STATIC_URL, render, see_other
from app.db import session_scope
from app.errors import CourierError


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    login = f"{PREFIX}/login"
    if request.method == "GET" and not _is_htmx(request):
        wanted = f"{request.url.path}?{request.url.query}" if request.url.query else request.url.path
        return see_other(f"{login}?next={quote(wanted, safe='/')}")
    response = render(request, "error.html", {"title": "Signed out", "message": "Sign in again."}, status_code=401)
    response.headers["HX-Redirect"] = login
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    """A refused change (a bad CSRF token, a viewer's POST): a 403 page, and an audit entry (outcome `denied`)."""
    message = exc.message if isinstance(exc, ConsoleForbidden) else "Forbidden."
    user = getattr(request.state, "console_user", None)
    await run_in_threadpool(_record_denied, user.principal if user else "anonymous", request, message)
    return render(request, "error.html", {"title": "Not allowed", "message": message}, status_code=403)


def _record_denied(actor: Any, request: Request, message: str) -> None:
    with session_scope() as session:
        audit_service.record(
            session=session,
            actor=actor,
            action=f"{request.method} {request.url.path}"[:100],
            target=request.url.path,
            outcome="denied",
            details={"why": message},
        )


def mount(app: FastAPI) -> None:
    """Serve the console under /console: its routes, its own static files, and its answers as pages.

    Call after `errors.register(app)`: a domain error or an invalid form on a console page is shown as a page,
    everywhere else the API's JSON handlers answer as before.
    """
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="console-static")
    # Every answer the API gives as its JSON envelope (a domain error, an invalid form, an unknown path, a service
    # down in the middle of a page: Redis, the database, the broker; an unexpected error) is a page on the console.
    for kind, api_handler in list(app.exception_handlers.items()):

        async def handler(request: Request, exc: Exception, api_handler: Any = api_handler) -> Response:
            answer: Response = await api_handler(request, exc)
            if not request.url.path.startswith(PREFIX + "/") and request.url.path != PREFIX:
                return answer
            if isinstance(exc, CourierError):
                title, message = "Could not do that", exc.message
            elif isinstance(exc, RequestValidationError):
                title, message = "Invalid input", _invalid(exc)
            else:
                title, message = _TITLES.get(answer.status_code, "Could not do that"), _message(answer)
            page = render(request, "error.html", {"title": title, "message": message}, status_code=answer.status_code)
            if "retry-after" in answer.headers:
                page.headers["Retry-After"] = answer.headers["retry-after"]
            return page

        app.add_exception_handler(kind, handler)
    # (the console's own answers, after the loop: they are pages and redirects already)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(ConsoleForbidden, _forbidden)


#: The heading of a console page that shows one of the API's error answers, by its status.
_TITLES = {404: "Not found", 405: "Not allowed", 500: "Unexpected error", 503: "Unavailable"}


def _message(answer: Response) -> str:
    """The message of the API's error envelope (`{"error": {"message": ...}}`) in `answer`."""
    try:
        return str(json.loads(bytes(answer.body))["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "Courier could not answer this page."


def _invalid(exc: Exception) -> str:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in errors]
    return "; ".join(parts) or "The request is not valid."
