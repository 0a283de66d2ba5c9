"""Delivering one notification exactly once as its recipient sees it.

The row is the idempotency key: `deliver` locks it (SELECT ... FOR UPDATE), sends only while it is pending
or failed and due, and records the outcome in the same transaction. A redelivered or replayed task finds
the row `sent` and sends nothing; two tasks for the same row queue on the lock and the second sends nothing.
The provider also gets a stable reference (`notification-<id>`: HTTP `Idempotency-Key`, SMTP `Message-ID`)
for the one window no database can close: a crash after the provider accepted and before the commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.config import Settings, get_settings
from app.db import session_scope, utcnow
from app.notifications import service as notification_service
from app.notifications import templates
from app.notifications.channels import (
    DeliveryError,
    OutgoingMessage,
    Sender,
    TransientDeliveryError,
    sender_for,
)
from app.notifications.models import Channel, Notification, Status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What `deliver` did: `sent` (now), `already` (sent or cancelled before), `not_due`, or `needs_secret`."""

    notification_id: int
    result: str
    status: str
    provider_message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (a task result): ids and statuses only, never the message."""
        return {
            "notification_id": self.notification_id,
            "result": self.result,
            "status": self.status,
            "provider_message_id": self.provider_message_id,
        }


class DeliveryFailed(Exception):
    """The provider did not take the message; the row already records why (`last_error`)."""

    def __init__(self, notification_id: int, error: DeliveryError) -> None:
        super().__init__(f"notification {notification_id}: {error.reason}")
        self.notification_id = notification_id
        self.transient = error.transient
        self.retry_after = error.retry_after


def message_for(row: Notification, secret_context: dict[str, Any] | None = None) -> OutgoingMessage:
    """Render a row into the message its channel sends; `secret_context` (a token, a code) exists only here."""
    context: dict[str, Any] = {**(row.data or {}), **(secret_context or {})}
    context.setdefault("subject", row.subject or "")
    context.setdefault("body", row.body or "")
    rendered = templates.render(row.template or "message", context, html=row.channel == Channel.email)
    public_data = {k: v for k, v in (row.data or {}).items() if not k.startswith("_")}
    return OutgoingMessage(
        reference=f"notification-{row.id}",
        channel=str(row.channel),
        recipient=row.recipient,
        subject=rendered.subject or (row.subject or ""),
        text=rendered.text,
        html=rendered.html,
        data=public_data,
    )


def deliver(
    notification_id: int,
    *,
    final_attempt: bool,
    secret_context: dict[str, Any] | None = None,
    sender: Sender | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """Send one notification if it still needs sending; record the outcome.

    Parameters:
        final_attempt: a transient failure now marks the row failed (retryable) instead of leaving it pending.
        secret_context: values rendered into the message and never stored (only identity tasks pass one).
        sender: a channel backend to reuse (a bulk send keeps one SMTP connection); one is made otherwise.

    Raises:
        DeliveryFailed: the provider refused it (permanent) or could not take it now (transient).
    """
    settings = settings or get_settings()
    own_sender = sender is None
    failure: DeliveryError | None = None
    try:
        with session_scope() as session:
            row = session.get(Notification, notification_id, with_for_update=True)
            if row is None:
                raise LookupError(f"notification {notification_id} does not exist")
            if row.status in (Status.sent, Status.cancelled):
                return Outcome(row.id, "already", str(row.status), row.provider_message_id)
            if row.send_at is not None and row.send_at > utcnow():
                return Outcome(row.id, "not_due", str(row.status))
            if row.carries_secret and secret_context is None:
                return Outcome(row.id, "needs_secret", str(row.status))
            sender = sender or sender_for(str(row.channel), settings)
            row.attempts += 1
            try:
                receipt = sender.send(message_for(row, secret_context))
            except DeliveryError as exc:
                failure = exc
                _record_failure(row, exc, final_attempt=final_attempt)
            else:
                row.status, row.sent_at = Status.sent, utcnow()
                row.provider_message_id, row.last_error, row.retryable = receipt.provider_message_id, None, False
                logger.info("Notification %s sent by %s (%s).", row.id, row.channel, receipt.provider_message_id)
                return Outcome(row.id, "sent", str(row.status), receipt.provider_message_id)
    finally:
        if own_sender and sender is not None:
            sender.close()
    assert failure is not None
    raise DeliveryFailed(notification_id, failure)


def _record_failure(row: Notification, error: DeliveryError, *, final_attempt: bool) -> None:
    row.last_error = error.reason
    if isinstance(error, TransientDeliveryError) and not final_attempt:
        logger.info("Notification %s: transient failure, will retry: %s", row.id, error.reason)
        return
    row.status, row.retryable = Status.failed, error.transient
    notification_service.on_failed(row)
