"""SQL table of the audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class AuditEvent(Base):
    """One recorded action. Rows are only ever inserted: no API updates or deletes them."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    role: Mapped[str | None] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(20), default="success")
    reason: Mapped[str | None] = mapped_column(String(500))
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_events_at", "at"), Index("ix_audit_events_action", "action"))
