"""SQL tables of the outbound event log: events, their subscribers (webhook endpoints) and one delivery per event
and subscribed endpoint. Every domain emits events here; app/integrations signs and sends the deliveries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.crypto import EncryptedText
from app.db import Base, TimestampMixin, utcnow


class WebhookEndpoint(TimestampMixin, Base):
    """A receiver of signed events. The secret signs deliveries; during a rotation the previous one also signs
    until `previous_secret_expires_at`."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    #: Subscribed event types; `["*"]` means every type.
    event_types: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    #: The API key that registered it (owner), and the user to notify when it is disabled, if given.
    owner: Mapped[str] = mapped_column(String(100))
    owner_user_id: Mapped[int | None]
    #: Signing secrets, stored encrypted (app/crypto.py): HMAC keys must be read back, so they cannot be hashed.
    #: Loaded (and decrypted) only when read: listing or updating endpoints never touches them.
    secret: Mapped[str] = mapped_column(EncryptedText, deferred=True)
    previous_secret: Mapped[str | None] = mapped_column(EncryptedText, deferred=True)
    previous_secret_expires_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)


class WebhookEvent(Base):
    """One event, Courier's own or a client's; fanned out as one delivery per subscribed endpoint."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Public id (`evt_...`).
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, object]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_webhook_events_created_at", "created_at"),)


class DeliveryStatus(StrEnum):
    """Where a delivery is: waiting (first try or a retry), delivered, or failed for good."""

    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class WebhookDelivery(Base):
    """One event to one endpoint. `message_id` is the `webhook-id` header: the same on every retry."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    status: Mapped[DeliveryStatus] = mapped_column(String(20), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    #: The task carrying it; None until it was published (the sweeper publishes those left behind).
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_status", "status"),
    )
