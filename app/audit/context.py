"""What the audit trail knows about the HTTP call in progress: who is calling, from where, and whether a service
already recorded the call's action itself (so the generic HTTP audit does not record it twice)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass
class HttpCall:
    """Mutable on purpose: dependencies run in copied contexts (thread pool), and must still reach the
    middleware's record of the call."""

    method: str
    path: str
    client_address: str | None
    principal: Any = None
    recorded: bool = False


#: The action of a failed authentication (counted by the daily report and anomaly detection).
AUTH_FAILED = "auth.failed"

#: The HTTP call being served; None outside a request (workers, the CLI).
current_call: ContextVar[HttpCall | None] = ContextVar("courier_audit_call", default=None)


def remember_principal(principal: Any) -> None:
    """Called by authentication: the caller of the current HTTP call (for the generic audit entry)."""
    call = current_call.get()
    if call is not None:
        call.principal = principal
