"""Write to the audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.access.service import Principal
from app.audit.models import AuditEvent


def record(
    *,
    session: Session,
    actor: Principal | str,
    action: str,
    target: str | None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
) -> AuditEvent:
    """Append one event in the caller's transaction (so the action and its record commit together)."""
    name, role = (actor.name, actor.role.value) if isinstance(actor, Principal) else (actor, None)
    event = AuditEvent(
        actor=name, role=role, action=action, target=target, reason=reason, details=details, outcome=outcome
    )
    session.add(event)
    session.flush()
    return event


def list_for_target(*, session: Session, target: str) -> list[AuditEvent]:
    """Every event about one target, oldest first."""
    return list(session.scalars(select(AuditEvent).where(AuditEvent.target == target).order_by(AuditEvent.id)))
