"""The generic HTTP audit: every API call that changes something, and every failed authentication, is recorded
once (actor, action, target, request id, client address, outcome), unless its service recorded it itself."""

from __future__ import annotations

import logging
from functools import lru_cache

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import service as audit_service
from app.audit.context import AUTH_FAILED, HttpCall, current_call
from app.config import get_settings
from app.db import session_scope

logger = logging.getLogger(__name__)

#: Methods that change something.
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@lru_cache
def _exempt_paths() -> tuple[str, ...]:
    return tuple(p.strip() for p in get_settings().audit_http_exempt_paths.split(",") if p.strip())


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403) else "failure"


def _write(call: HttpCall, action: str, status: int | None, route: str | None) -> None:
    principal = call.principal
    with session_scope() as session:
        audit_service.record(
            session=session,
            actor=principal if principal is not None else "anonymous",
            action=action,
            target=call.path,
            outcome=_outcome(status) if status is not None else "error",
            details={"method": call.method, "route": route, "status": status},
            client_address=call.client_address,
        )


def _template(scope: Scope, path: str) -> str:
    """The path with its parameters named (`/webhooks/{endpoint_id}`), so one action groups every target."""
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    if not params:
        return path
    return "/".join("{" + params[part] + "}" if part in params else part for part in path.split("/"))


class AuditMiddleware:
    """Records the call before its response starts, so an answered change always has its entry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        call = HttpCall(method=scope["method"], path=scope["path"], client_address=client[0] if client else None)
        token = current_call.set(call)
        done = False

        async def audit(status: int | None) -> None:
            nonlocal done
            if done:
                return
            done = True
            action = self._action(scope, call, status)
            if action is None:
                return
            route = _template(scope, call.path)
            try:
                await run_in_threadpool(_write, call, action, status, route)
            except Exception:
                logger.exception("Recording the audit entry of %s %s failed.", call.method, call.path)

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                await audit(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except BaseException:
            await audit(None)
            raise
        finally:
            current_call.reset(token)

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
