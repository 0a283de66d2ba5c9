"""SQL table of notifications: one row per message to one recipient, the idempotency key of its delivery."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin


class Channel(StrEnum):
    """How a notification travels."""

    email = "email"
    sms = "sms"
    push = "push"


class Status(StrEnum):
    """Where a notification is. Only `sent` and `cancelled` are final; a `failed` one may be retried."""

    #: Waiting to be sent (now, or at `send_at`).
    pending = "pending"
    #: The provider accepted it; `provider_message_id` says under which id.
    sent = "sent"
    #: The provider refused it, or transient failures exhausted the retries; `last_error` says why.
    failed = "failed"
    #: Cancelled by its sender before it was sent.
    cancelled = "cancelled"


class Notification(TimestampMixin, Base):
    """One message to one recipient.

    A send task takes the row's id, locks the row, and sends only while it is `pending` (or `failed`), so a
    redelivered or replayed task never sends twice. Rows of messages that carry a secret (a reset link, an
    MFA code) keep only the template and non-secret data: the secret exists in the sending task's memory.
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[Channel] = mapped_column(String(10))
    recipient: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(100))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tier: Mapped[str] = mapped_column(String(10), default="high")
    status: Mapped[Status] = mapped_column(String(10), default=Status.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    send_at: Mapped[datetime | None]
    #: When a send task was last published for it (the scheduler re-dispatches rows that were due later).
    dispatched_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(300))
    last_error: Mapped[str | None] = mapped_column(String(1000))
    #: True when the last failure was transient (retry_failed_notifications may try again).
    retryable: Mapped[bool] = mapped_column(default=False)
    #: The message embeds a secret made by an identity task; only that task can (re)send it.
    carries_secret: Mapped[bool] = mapped_column(default=False)
    #: Unique key of the workflow that created it (an identity task, a security alert), when one exists.
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    #: Rows created by one bulk send share its batch id.
    batch_id: Mapped[str | None] = mapped_column(String(36))
    #: Who asked for it: an API key name, or `system`.
    created_by: Mapped[str] = mapped_column(String(100), default="system")

    __table_args__ = (
        Index("ix_notifications_status_send_at", "status", "send_at"),
        Index("ix_notifications_batch_id", "batch_id"),
    )
