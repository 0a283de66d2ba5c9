"""Notification rows: create (one, bulk, or `notify` from other code), read, cancel, and find due work.

`notify()` is the function other domains call. It adds the row to the caller's session and registers a
dispatch of its send task for *after the caller's commit* (the outbox of app/dispatch.py): a rolled-back
transaction sends nothing, and a committed one is published at once. If that publish fails (broker down),
the row stays pending and `process_scheduled_notifications` picks it up within NOTIFICATION_STALE_S.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session, object_session

from app import dispatch
from app.config import get_settings
from app.db import utcnow
from app.events import service as events
from app.notifications.exceptions import NotCancellable, NotificationNotFound
from app.notifications.models import Channel, Notification, Status

logger = logging.getLogger(__name__)

#: The send task of each channel (one task per channel, each taking a notification id).
SEND_TASKS = {
    Channel.email: "notifications.send_email",
    Channel.sms: "notifications.send_sms",
    Channel.push: "notifications.send_push_notification",
}


def create(
    *,
    session: Session,
    channel: Channel | str,
    recipient: str,
    subject: str | None = None,
    body: str | None = None,
    template: str | None = None,
    data: dict[str, Any] | None = None,
    tier: str = "high",
    send_at: datetime | None = None,
    created_by: str = "system",
    dedupe_key: str | None = None,
    carries_secret: bool = False,
) -> Notification:
    """Add one pending notification to the session (flushed, so it has an id)."""
    row = Notification(
        channel=Channel(channel),
        recipient=recipient,
        subject=subject,
        body=body,
        template=template,
        data=data,
        tier=str(tier),
        send_at=send_at,
        created_by=created_by,
        dedupe_key=dedupe_key,
        carries_secret=carries_secret,
        status=Status.pending,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row


def notify(
    session: Session,
    *,
    channel: Channel | str,
    recipient: str,
    subject: str | None,
    body: str,
    tier: str = "high",
    data: dict[str, Any] | None = None,
    send_at: datetime | None = None,
    created_by: str = "system",
    dedupe_key: str | None = None,
) -> Notification:
    """Create a notification in the caller's transaction and send it once that transaction commits.

    `session` may be passed by position or by name (`notify(session, channel=...)`).

    Returns the row (with its id). Nothing is published if the caller rolls back. A scheduled one (`send_at`
    in the future) is sent by `process_scheduled_notifications` when due.
    """
    row = create(
        session=session,
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        template="message",
        data=data,
        tier=tier,
        send_at=send_at,
        created_by=created_by,
        dedupe_key=dedupe_key,
    )
    if send_at is None or send_at <= utcnow():
        row.dispatched_at = utcnow()
        _publish_send(session, row.id, row.channel, created_by)
    return row


def _publish_send(session: Session, notification_id: int, channel: Channel, triggered_by: str) -> None:
    dispatch.enqueue_after_commit(
        session, SEND_TASKS[channel], kwargs={"notification_id": notification_id}, triggered_by=triggered_by
    )


def create_bulk(
    *,
    session: Session,
    channel: Channel,
    recipients: Sequence[str],
    subject: str | None,
    body: str,
    data: dict[str, Any] | None,
    tier: str,
    created_by: str,
) -> str:
    """Insert one pending notification per recipient under a new batch id (one multi-row insert)."""
    batch_id = str(uuid.uuid4())
    now = utcnow()
    rows = [
        {
            "channel": channel,
            "recipient": recipient,
            "subject": subject,
            "body": body,
            "template": "message",
            "data": data,
            "tier": tier,
            "status": Status.pending,
            "attempts": 0,
            "dispatched_at": now,
            "batch_id": batch_id,
            "created_by": created_by,
            "retryable": False,
            "carries_secret": False,
            "created_at": now,
            "updated_at": now,
        }
        for recipient in recipients
    ]
    session.execute(insert(Notification), rows)
    return batch_id


def get(*, session: Session, notification_id: int, owner: str | None = None) -> Notification:
    """One notification; with `owner`, only if that caller created it (others get NotificationNotFound)."""
    row = session.get(Notification, notification_id)
    if row is None or (owner is not None and row.created_by != owner):
        raise NotificationNotFound(notification_id)
    return row


def get_by_dedupe_key(*, session: Session, dedupe_key: str) -> Notification | None:
    """The notification a workflow created under `dedupe_key`, if any."""
    return session.scalar(select(Notification).where(Notification.dedupe_key == dedupe_key))


def cancel(*, session: Session, notification_id: int, owner: str | None = None) -> Notification:
    """Cancel a pending notification (locked, so a send in progress finishes first and wins)."""
    row = session.get(Notification, notification_id, with_for_update=True)
    if row is None or (owner is not None and row.created_by != owner):
        raise NotificationNotFound(notification_id)
    if row.status != Status.pending:
        raise NotCancellable(notification_id, str(row.status))
    row.status = Status.cancelled
    return row


def batch_ids(*, session: Session, batch_id: str, after_id: int, limit: int) -> list[int]:
    """Ids of a batch's rows after `after_id`, in order (one chunk of a bulk send)."""
    query = (
        select(Notification.id)
        .where(Notification.batch_id == batch_id, Notification.id > after_id)
        .order_by(Notification.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def batch_size(*, session: Session, batch_id: str) -> int:
    """How many rows a batch has."""
    return int(session.scalar(select(func.count()).where(Notification.batch_id == batch_id)) or 0)


def claim_due(*, session: Session, now: datetime, limit: int = 1000) -> list[Notification]:
    """Pending rows that should be (re)dispatched now, marked dispatched.

    Due means: a `send_at` that has passed and no dispatch since it was due; or a dispatch longer ago than
    NOTIFICATION_STALE_S that never led to a send (a lost task, a failed publish). Rows that carry a secret
    and rows of a bulk batch are left to the task that owns them.
    """
    stale_before = now - timedelta(seconds=get_settings().notification_stale_s)
    query = (
        select(Notification)
        .where(
            Notification.status == Status.pending,
            Notification.carries_secret.is_(False),
            Notification.batch_id.is_(None),
            or_(Notification.send_at.is_(None), Notification.send_at <= now),
            or_(
                Notification.dispatched_at.is_(None),
                Notification.dispatched_at < Notification.send_at,
                Notification.dispatched_at < stale_before,
            ),
        )
        .order_by(Notification.send_at, Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = list(session.scalars(query))
    for row in rows:
        row.dispatched_at = now
    return rows


def claim_retryable(*, session: Session, now: datetime, limit: int) -> list[Notification]:
    """Failed rows whose last failure was transient and that have attempts left, set back to pending."""
    query = (
        select(Notification)
        .where(
            Notification.status == Status.failed,
            Notification.retryable.is_(True),
            Notification.carries_secret.is_(False),
            Notification.attempts < get_settings().notification_max_attempts,
        )
        .order_by(Notification.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = list(session.scalars(query))
    for row in rows:
        row.status, row.dispatched_at = Status.pending, now
    return rows


def on_failed(notification: Notification) -> None:
    """A notification has just failed for good (or until retry_failed_notifications tries again).

    The one place `notification.failed` happens: the event emitter (app/events) is wired here.
    """
    logger.warning(
        "Notification %s (%s) failed after %d attempt(s): %s",
        notification.id,
        notification.channel,
        notification.attempts,
        notification.last_error,
    )
    session = object_session(notification)
    if session is not None:  # in the delivery's transaction: the event commits with the failure
        events.emit(
            session,
            "notification.failed",
            {
                "notification_id": notification.id,
                "channel": str(notification.channel),
                "attempts": notification.attempts,
                "error": notification.last_error,
                "retryable": notification.retryable,
            },
        )
