"""The console's sign-in: a signed session cookie, its CSRF token, and the checks every page and form runs.

The cookie (`courier_console`, path /console) holds `{sid, kid, csrf}` signed and timestamped by itsdangerous
(`URLSafeTimedSerializer`, the signer Starlette's own SessionMiddleware uses) with CONSOLE_SESSION_SECRET; it is
HttpOnly, SameSite=Strict, Secure when CONSOLE_COOKIE_SECURE, and expires after CONSOLE_SESSION_TTL_S (the
signature's age is checked too, so a cookie kept past its Max-Age is refused). It names the API key by id, never
holds the key, and every request checks that the key is still active (a revoked key ends its sessions). Signing out
records the session id in Redis until the cookie would have expired, so a copy of the cookie stops working too.

Every state-changing form carries the session's CSRF token (a field, or the `X-CSRF-Token` header for htmx);
`require_change` refuses a missing or wrong token (403), then a viewer (403), before any route code runs.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.access import service as access_service
from app.access.models import Role
from app.access.schemas import Principal
from app.audit import service as audit_service
from app.audit.context import remember_principal
from app.config import Settings, get_settings
from app.constants import REDIS_PREFIX
from app.db import session_scope
from app.redis_store import get_redis

COOKIE = "courier_console"
#: A sign-in form's own token (double submit: this cookie and the form's hidden field must match).
LOGIN_COOKIE = "courier_console_login"
COOKIE_PATH = "/console"
#: `courier:console:ended:<sid>`: a session signed out before its expiry (TTL: the rest of its lifetime).
ENDED_KEY = REDIS_PREFIX + "console:ended:{sid}"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: Roles that may sign in; a client key may not.
CONSOLE_ROLES = (Role.admin, Role.viewer)


@dataclass(frozen=True)
class ConsoleUser:
    """A signed-in console user: the key's principal, the session's id and its CSRF token."""

    principal: Principal
    sid: str
    csrf: str

    @property
    def can_change(self) -> bool:
        """Whether the user may act (admin) or only read (viewer)."""
        return self.principal.is_admin


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, forms answer 401."""


class ConsoleForbidden(Exception):
    """A signed-in user may not do this (a viewer's change, a bad CSRF token): 403."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _serializer(settings: Settings, salt: str = "console-session") -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.console_session_secret, salt=salt)


def _cookie_options(settings: Settings, max_age: int) -> dict[str, Any]:
    return {
        "max_age": max_age,
        "path": COOKIE_PATH,
        "httponly": True,
        "samesite": "strict",
        "secure": settings.console_cookie_secure,
    }


def new_session(principal: Principal, settings: Settings) -> tuple[str, dict[str, Any]]:
    """The signed cookie value of a new session for `principal`, and the options to set it with."""
    data = {"sid": secrets.token_urlsafe(16), "kid": principal.key_id, "csrf": secrets.token_urlsafe(32)}
    return _serializer(settings).dumps(data), _cookie_options(settings, settings.console_session_ttl_s)


def login_token(settings: Settings) -> tuple[str, str, dict[str, Any]]:
    """A sign-in form's token: (the form's field value, the cookie's value, cookie options)."""
    raw = secrets.token_urlsafe(16)
    return raw, _serializer(settings, "console-login").dumps(raw), _cookie_options(settings, 3600)


def login_token_valid(request: Request, field: str, settings: Settings) -> bool:
    """Whether the sign-in form's field matches its cookie (signed, at most an hour old)."""
    try:
        expected = _serializer(settings, "console-login").loads(request.cookies.get(LOGIN_COOKIE, ""), max_age=3600)
    except BadSignature:
        return False
    return isinstance(expected, str) and _same(expected, field)


def _same(sent: str, expected: str) -> bool:
    """Constant-time equality of a token the client sent with ours. As bytes: `hmac.compare_digest` raises
    TypeError on a str with any non-ASCII character, and a form field or header (read as latin-1) can carry one."""
    return hmac.compare_digest(sent.encode(), expected.encode())


def sign_in(key: str) -> Principal | None:
    """The principal of an active admin or viewer key (its sign-in audited); None for a client key or an unknown
    or revoked one (the 401 is audited as a failed authentication)."""
    with session_scope() as session:
        principal = access_service.lookup(session=session, digest=access_service.hash_key(key.strip()))
        if principal is None or principal.role not in CONSOLE_ROLES:
            return None
        audit_service.record(session=session, actor=principal, action="console.sign_in", target="console")
    return principal


def end(user: ConsoleUser, settings: Settings) -> None:
    """Sign a session out for good: its cookie, or any copy of it, is refused from now on (audited)."""
    get_redis().set(ENDED_KEY.format(sid=user.sid), "1", ex=settings.console_session_ttl_s)
    with session_scope() as session:
        audit_service.record(session=session, actor=user.principal, action="console.sign_out", target="console")


def _read(request: Request, settings: Settings) -> ConsoleUser | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(settings).loads(raw, max_age=settings.console_session_ttl_s)
    except BadSignature:  # (SignatureExpired is one: too old)
        return None
    if not isinstance(data, dict) or not {"sid", "kid", "csrf"} <= data.keys():
        return None
    if get_redis().exists(ENDED_KEY.format(sid=data["sid"])):
        return None
    with session_scope() as session:
        principal = access_service.get_active(session=session, key_id=int(data["kid"]))
    if principal is None or principal.role not in CONSOLE_ROLES:
        return None
    return ConsoleUser(principal=principal, sid=str(data["sid"]), csrf=str(data["csrf"]))


async def current_user(request: Request) -> ConsoleUser:
    """The signed-in user; SignInRequired otherwise (a page redirects to the sign-in page)."""
    user = await run_in_threadpool(_read, request, get_settings())
    if user is None:
        raise SignInRequired()
    remember_principal(user.principal)
    request.state.console_user = user
    return user


UserDep = Annotated[ConsoleUser, Depends(current_user)]


async def _check_csrf(request: Request, user: ConsoleUser) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not _same(sent, user.csrf):
        raise ConsoleForbidden("The form's security token is missing or wrong; reload the page and try again.")


async def require_form(request: Request, user: UserDep) -> ConsoleUser:
    """A signed-in user whose request carries the session's CSRF token (signing out, which a viewer may do)."""
    await _check_csrf(request, user)
    return user


async def require_change(request: Request, user: UserDep) -> ConsoleUser:
    """A user who may change something: the request carries the session's CSRF token, and the user is an admin.

    The token is checked first, so a forged request learns nothing about the role; both refusals are 403.
    """
    await _check_csrf(request, user)
    if not user.can_change:
        raise ConsoleForbidden("A viewer reads only: this action needs an admin key.")
    return user


FormUserDep = Annotated[ConsoleUser, Depends(require_form)]
AdminUserDep = Annotated[ConsoleUser, Depends(require_change)]
