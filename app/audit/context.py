"""What the audit trail knows about the HTTP call in progress: who is calling, from where, whether a service
already recorded the call's action itself (so the generic HTTP audit does not record it twice), and the call's
own transaction (so its audit entry commits with its change, before its response starts)."""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db import session_scope


@dataclass
class HttpCall:
    """Mutable on purpose: dependencies run in copied contexts (thread pool), and must still reach the
    middleware's record of the call."""

    method: str
    path: str
    client_address: str | None
    principal: Any = None
    recorded: bool = False
    #: The request's session (app.audit.context.request_session) while its transaction is open and unanswered: the audit
    #: middleware records the call's entry in it and commits it as the response starts.
    session: Session | None = None


#: The action of a failed authentication (counted by the daily report and anomaly detection).
AUTH_FAILED = "auth.failed"

#: The HTTP call being served; None outside a request (workers, the CLI).
current_call: ContextVar[HttpCall | None] = ContextVar("courier_audit_call", default=None)


def remember_principal(principal: Any) -> None:
    """Called by authentication: the caller of the current HTTP call (for the generic audit entry)."""
    call = current_call.get()
    if call is not None:
        call.principal = principal


def adopt_session(session: Session) -> HttpCall | None:
    """Called by the request's session dependency: the middleware ends this transaction when the answer starts.

    Returns the call (None outside the HTTP middleware: the dependency then commits the session itself).
    """
    call = current_call.get()
    if call is not None:
        call.session = session
    return call


def request_session() -> Iterator[Session]:
    """The HTTP request's session (a FastAPI dependency of the API and the console): one transaction per request.

    The audit middleware adds the call's audit entry to this transaction and commits it when the route has
    answered, before the status line goes out: a client never sees a 2xx for a change that is not committed. A route
    that raises rolls it back. Outside the middleware (an app without it) `session_scope` commits it here. Why the
    middleware commits and not this function: FastAPI (0.118 on) runs the code after `yield` only once the response
    has been sent, and only the middleware knows the answer's status as it starts.
    """
    with session_scope() as session:
        call = adopt_session(session)
        try:
            yield session
        finally:
            if call is not None and call.session is session:
                call.session = None
