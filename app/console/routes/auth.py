"""Sign in with an admin or viewer API key, sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.config import get_settings
from app.console import session
from app.console.session import FormUserDep
from app.console.web import PREFIX, render, see_other

router = APIRouter()


def _safe_next(value: str | None) -> str:
    """Only a console path (never another site, never a scheme-relative URL) is followed after sign-in."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


def _login_page(request: Request, next_url: str, error: str | None = None, status_code: int = 200) -> Response:
    settings = get_settings()
    field, cookie, options = session.login_token(settings)
    response = render(
        request, "login.html", {"login_token": field, "next": next_url, "error": error}, status_code=status_code
    )
    response.set_cookie(session.LOGIN_COOKIE, cookie, **options)
    return response


@router.get("/login")
def show_login(request: Request, next: str | None = None) -> Response:  # noqa: A002
    """The sign-in form."""
    return _login_page(request, _safe_next(next))


@router.post("/login")
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)],
    login_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "",  # noqa: A002
) -> Response:
    """Open a session for an admin or viewer key; a client, unknown or revoked key is refused (401, audited)."""
    settings = get_settings()
    if not session.login_token_valid(request, login_token, settings):
        return _login_page(request, _safe_next(next), "The sign-in form expired; try again.", 403)
    principal = await run_in_threadpool(session.sign_in, api_key)
    if principal is None:
        return _login_page(
            request, _safe_next(next), "That key cannot sign in (unknown, revoked or a client key).", 401
        )
    value, options = session.new_session(principal, settings)
    response = see_other(_safe_next(next))
    response.set_cookie(session.COOKIE, value, **options)
    response.delete_cookie(session.LOGIN_COOKIE, path=session.COOKIE_PATH)
    return response


@router.post("/logout")
async def sign_out(user: FormUserDep) -> Response:
    """End the session: the cookie is dropped, and refused from now on even if a copy of it is replayed."""
    await run_in_threadpool(session.end, user, get_settings())
    response = see_other(f"{PREFIX}/login")
    response.delete_cookie(session.COOKIE, path=session.COOKIE_PATH)
    return response
