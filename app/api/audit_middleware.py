"""The generic HTTP audit: every API call that changes something, and every failed authentication, is recorded
once (actor, action, target, request id, client address, outcome), unless its service recorded it itself; and
the request's transaction ends here, with that entry in it, before the response starts."""

from __future__ import annotations

import logging
from functools import lru_cache

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import service as audit_service
from app.audit.context import AUTH_FAILED, HttpCall, current_call
from app.config import get_settings
from app.db import session_scope
from app.errors import DATABASE, error_response

logger = logging.getLogger(__name__)

#: The status of a call whose transaction failed to commit (it replaces the route's answer).
UNCOMMITTED = 503

#: Methods that change something.
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@lru_cache
def _exempt_paths() -> tuple[str, ...]:
    return tuple(p.strip() for p in get_settings().audit_http_exempt_paths.split(",") if p.strip())


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403) else "failure"


def _record(session: Session, call: HttpCall, action: str, status: int | None, route: str | None) -> None:
    principal = call.principal
    audit_service.record(
        session=session,
        actor=principal if principal is not None else "anonymous",
        action=action,
        target=call.path,
        outcome=_outcome(status) if status is not None else "error",
        details={"method": call.method, "route": route, "status": status},
        client_address=call.client_address,
    )


def _write(call: HttpCall, action: str, status: int | None, route: str | None) -> None:
    """The entry in a transaction of its own: the call had no open transaction (none, or rolled back)."""
    with session_scope() as session:
        _record(session, call, action, status, route)


def _commit(session: Session, call: HttpCall, action: str | None, status: int, route: str) -> None:
    """End the call's own transaction: its entry (when it needs one) and its change commit together."""
    try:
        if action is not None:
            _record(session, call, action, status, route)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _of(call: HttpCall) -> tuple[str, str]:
    return call.method, call.path


def _uncommitted() -> JSONResponse:
    """The answer of a call whose transaction did not commit: nothing was saved, and it may be retried."""
    return error_response(
        UNCOMMITTED,
        "unavailable",
        "The database did not commit the change, so nothing was saved; retry the request.",
        headers={"Retry-After": "1"},
    )


def _template(scope: Scope, path: str) -> str:
    """The path with its parameters named (`/webhooks/{endpoint_id}`), so one action groups every target."""
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    if not params:
        return path
    return "/".join("{" + params[part] + "}" if part in params else part for part in path.split("/"))


class AuditMiddleware:
    """Ends each call's transaction as its response starts, with the call's audit entry in it.

    The request's session (app.audit.context.request_session) is still open when the route has answered: its change and
    the entry commit together, before the status line goes out. A call without an open transaction (none, or one
    its route rolled back by raising) gets its entry in a transaction of its own. When the commit fails nothing of
    the call was saved: the client gets 503 instead of the route's answer, and the failure is recorded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        # A NUL in the path (refused, 404 or 422) is recorded as U+FFFD: SQL text cannot hold a NUL.
        path = scope["path"].replace("\x00", "\ufffd")
        call = HttpCall(method=scope["method"], path=path, client_address=client[0] if client else None)
        token = current_call.set(call)
        done = replaced = False

        async def settle(status: int | None) -> bool:
            """Commit the call's transaction with its entry; False when that commit failed (nothing was saved)."""
            nonlocal done
            if done:
                return True
            done = True
            session, call.session = call.session, None
            route = _template(scope, call.path)
            if session is not None and status is not None:
                try:
                    await run_in_threadpool(_commit, session, call, self._action(scope, call, status), status, route)
                    return True
                except Exception:
                    logger.exception("Committing %s %s failed; it is answered 503, nothing of it saved.", *_of(call))
                    await self._write_own(scope, call, UNCOMMITTED, route)
                    return False
            if session is not None:  # an error escaped with the transaction still open: end it before writing
                await run_in_threadpool(session.rollback)
            await self._write_own(scope, call, status, route)
            return True

        async def send_settled(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of the answer whose transaction did not commit
            if message["type"] == "http.response.start" and not await settle(int(message["status"])):
                replaced = True
                await _uncommitted()(scope, receive, send)
                return
            await send(message)

        try:
            await self.app(scope, receive, send_settled)
        except BaseException:
            await settle(None)
            raise
        finally:
            current_call.reset(token)

    async def _write_own(self, scope: Scope, call: HttpCall, status: int | None, route: str) -> None:
        """The call's entry (when it needs one) in a transaction of its own; a failure is logged, not raised."""
        action = self._action(scope, call, status)
        if action is None:
            return
        try:
            await run_in_threadpool(_write, call, action, status, route)
        except DATABASE.errors as exc:  # the database is down: logged once per outage, not per call
            DATABASE.log.failed(f"recording the audit entry of {call.method} {call.path}: {type(exc).__name__}")
        except Exception:
            logger.exception("Recording the audit entry of %s %s failed.", *_of(call))

    @staticmethod
    def _action(scope: Scope, call: HttpCall, status: int | None) -> str | None:
        """The action to record for this call, or None when it needs no generic entry."""
        if status == 401:
            return AUTH_FAILED
        if call.method not in MUTATING or not call.path.startswith("/api/"):
            return None
        if call.path.startswith(_exempt_paths()):
            return None
        if call.recorded and status is not None and status < 400:
            return None  # the service recorded this action itself, in the same transaction as the change
        return f"{call.method} {_template(scope, call.path)}"[:100]
