"""SQL tables of the audit trail: the hash-chained events, their archives, reports and anomaly findings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow

#: `prev_hash` of the very first entry of the chain.
GENESIS_HASH = "0" * 64


class AuditEvent(Base):
    """One recorded action. Rows are only ever inserted: no API updates or deletes them (archival moves the
    oldest into files). `hash` chains each entry to the one before it, so an edited or removed row shows."""

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
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_address: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_action", "action"),
        Index("ix_audit_events_actor", "actor"),
        Index("ix_audit_events_target", "target"),
    )


class AuditArchive(Base):
    """One archive file of the oldest entries (compressed JSON Lines); the chain continues from `last_hash`."""

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_name: Mapped[str] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    first_id: Mapped[int] = mapped_column(Integer)
    last_id: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    first_prev_hash: Mapped[str] = mapped_column(String(64))
    last_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportKind(StrEnum):
    """What a report covers: one UTC day, one data subject (GDPR), or privileged actions over a period (SOX)."""

    daily = "daily"
    gdpr = "gdpr"
    sox = "sox"


class ReportStatus(StrEnum):
    """Where a report is: requested, being built, ready to download, or failed (with the error)."""

    pending = "pending"
    running = "running"
    ready = "ready"
    failed = "failed"


class AuditReport(Base):
    """A requested report; its JSON and CSV files live under AUDIT_REPORTS_DIR."""

    __tablename__ = "audit_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[ReportKind] = mapped_column(String(20))
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    status: Mapped[ReportStatus] = mapped_column(String(20), default=ReportStatus.pending)
    requested_by: Mapped[str] = mapped_column(String(100))
    task_id: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, object] | None] = mapped_column(JSON)
    files: Mapped[dict[str, str] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_audit_reports_created_at", "created_at"),)


class AuditFinding(Base):
    """One anomaly (a rule tripped for one subject); `key` makes it unique, so it is alerted at most once."""

    __tablename__ = "audit_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    rule: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    alert_task_id: Mapped[str | None] = mapped_column(String(64))
    alerted_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_audit_findings_rule_subject", "rule", "subject"),)
