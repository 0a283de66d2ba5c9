"""SQL tables of integrations: the attempts of webhook deliveries (endpoints, events and deliveries are in
app/events/models.py); external systems and the records pulled from them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, utcnow
from app.events.models import WebhookDelivery


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: status code (or error), latency, and an excerpt of the response."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey(WebhookDelivery.id, ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    latency_ms: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(Text)


class Integration(TimestampMixin, Base):
    """An external system Courier pulls records from (paginated with a cursor) and health-checks."""

    __tablename__ = "integrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    base_url: Mapped[str] = mapped_column(String(2000))
    enabled: Mapped[bool] = mapped_column(default=True)
    #: Where the next page starts; saved after each page, so a failed sync resumes instead of restarting.
    cursor: Mapped[str | None] = mapped_column(String(500))
    records_synced: Mapped[int] = mapped_column(Integer, default=0)
    last_synced_at: Mapped[datetime | None]
    sync_error: Mapped[str | None] = mapped_column(String(500))
    health: Mapped[str] = mapped_column(String(20), default="unknown")
    last_checked_at: Mapped[datetime | None]
    last_latency_ms: Mapped[int | None]
    last_status_code: Mapped[int | None]


class ExternalRecord(Base):
    """A record pulled from an external system, upserted by (integration, external id)."""

    __tablename__ = "external_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, object]] = mapped_column(JSON)
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("integration_id", "external_id", name="uq_external_records_integration_id"),)
