"""Notification tasks: thin adapters over app/notifications. Each takes ids and fetches the rest itself."""

from __future__ import annotations

import logging
from typing import Any

from app.config import get_settings
from app.constants import DELAY_BUCKETS_S
from app.db import session_scope, utcnow
from app.engine import publish
from app.engine.task import CourierTask, PermanentError, TransientError, courier_task
from app.errors import ServiceUnavailable
from app.notifications import delivery
from app.notifications import service as notification_service
from app.notifications.channels import sender_for
from app.notifications.delivery import DeliveryFailed, Outcome
from app.notifications.models import Channel, Notification

logger = logging.getLogger(__name__)


def final_attempt(task: CourierTask) -> bool:
    """True on the task's last allowed attempt (a transient failure now marks the notification failed)."""
    return (task.request.retries or 0) >= (task.max_retries or 0)


def deliver_or_raise(task: CourierTask, notification_id: int, **kwargs: Any) -> Outcome:
    """`delivery.deliver`, with its failures turned into the task's retry (transient) or dead letter (permanent).

    A transient failure that came with a provider's Retry-After waits at least that long.
    """
    final = final_attempt(task)
    try:
        return delivery.deliver(notification_id, final_attempt=final, **kwargs)
    except LookupError as exc:
        raise PermanentError(str(exc)) from exc
    except DeliveryFailed as exc:
        if not exc.transient:
            raise PermanentError(str(exc)) from exc
        if exc.retry_after and not final:
            # Delay queues round a countdown down to a bucket: take the first bucket that waits long enough.
            wait = next((b for b in DELAY_BUCKETS_S if b >= exc.retry_after), DELAY_BUCKETS_S[-1])
            raise task.retry(exc=TransientError(str(exc)), countdown=wait) from exc
        raise TransientError(str(exc)) from exc


def _send(task: CourierTask, notification_id: int, channel: Channel) -> dict[str, Any]:
    with session_scope() as session:
        row = notification_service.get(session=session, notification_id=notification_id)
        if row.channel != channel:
            raise PermanentError(f"notification {notification_id} is {row.channel}, not {channel}")
    return deliver_or_raise(task, notification_id).as_dict()


@courier_task("notifications.send_email")
def send_email(self: CourierTask, *, notification_id: int) -> dict[str, Any]:
    """Send one email notification (once: the row is the idempotency key)."""
    return _send(self, notification_id, Channel.email)


@courier_task("notifications.send_sms")
def send_sms(self: CourierTask, *, notification_id: int) -> dict[str, Any]:
    """Send one SMS notification (once: the row is the idempotency key)."""
    return _send(self, notification_id, Channel.sms)


@courier_task("notifications.send_push_notification")
def send_push_notification(self: CourierTask, *, notification_id: int) -> dict[str, Any]:
    """Send one push notification (once: the row is the idempotency key)."""
    return _send(self, notification_id, Channel.push)


@courier_task("notifications.send_bulk_notification")
def send_bulk_notification(self: CourierTask, *, batch_id: str) -> dict[str, int]:
    """Send every row of a bulk batch in chunks, reporting `current/total` after each chunk.

    Rows already sent (by an earlier attempt) are skipped; a transient failure of some rows retries the task,
    which then sends only those. A recipient the provider refuses for good is marked failed and reported.
    """
    settings = get_settings()
    with session_scope() as session:
        total = notification_service.batch_size(session=session, batch_id=batch_id)
        first_ids = notification_service.batch_ids(session=session, batch_id=batch_id, after_id=0, limit=1)
        channel = notification_service.get(session=session, notification_id=first_ids[0]).channel if first_ids else None
    if channel is None:
        raise PermanentError(f"bulk batch {batch_id} has no notifications")
    counts = {"total": total, "sent": 0, "already": 0, "failed": 0, "pending": 0}
    final = final_attempt(self)
    sender = sender_for(str(channel), settings)
    self.update_state(state="PROGRESS", meta={"current": 0, "total": total})
    try:
        done, after = 0, 0
        while ids := _chunk(batch_id, after, settings.bulk_chunk_size):
            for notification_id in ids:
                try:
                    outcome = delivery.deliver(notification_id, final_attempt=final, sender=sender, settings=settings)
                    counts["sent" if outcome.result == "sent" else "already"] += 1
                except DeliveryFailed as exc:
                    counts["pending" if exc.transient and not final else "failed"] += 1
            done, after = done + len(ids), ids[-1]
            self.update_state(state="PROGRESS", meta={"current": done, "total": total})
    finally:
        sender.close()
    logger.info("Bulk send %s (batch %s): %s.", self.request.id, batch_id, counts)
    if counts["pending"]:
        raise TransientError(f"{counts['pending']} of {total} recipients hit transient failures; retrying them")
    return counts


def _chunk(batch_id: str, after_id: int, size: int) -> list[int]:
    with session_scope() as session:
        return notification_service.batch_ids(session=session, batch_id=batch_id, after_id=after_id, limit=size)


def _dispatch_rows(rows: list[tuple[int, Channel, str]]) -> int:
    """Publish the send task of each (id, channel, created_by); unpublished rows are released for the next run."""
    for index, (notification_id, channel, created_by) in enumerate(rows):
        try:
            publish.dispatch(
                notification_service.SEND_TASKS[Channel(channel)],
                kwargs={"notification_id": notification_id},
                triggered_by=created_by,
            )
        except ServiceUnavailable as exc:
            left = [row[0] for row in rows[index:]]
            with session_scope() as session:
                for row in session.query(Notification).filter(Notification.id.in_(left)):
                    row.dispatched_at = None
            raise TransientError(f"publishing due notifications failed: {exc.message}") from exc
    return len(rows)


@courier_task("notifications.process_scheduled_notifications")
def process_scheduled_notifications(self: CourierTask) -> dict[str, int]:
    """Dispatch the send task of every notification that is due (beat: every NOTIFICATION_SCHEDULER_INTERVAL_S).

    Never early: a row is claimed only once its `send_at` has passed, and the send task checks again.
    """
    with session_scope() as session:
        rows = [(r.id, r.channel, r.created_by) for r in notification_service.claim_due(session=session, now=utcnow())]
    dispatched = _dispatch_rows(rows)
    if dispatched:
        logger.info("Dispatched %d due notification(s).", dispatched)
    return {"dispatched": dispatched}


@courier_task("notifications.retry_failed_notifications")
def retry_failed_notifications(self: CourierTask) -> dict[str, int]:
    """Dispatch again failed notifications whose last failure was transient (bounded per run and per row)."""
    settings = get_settings()
    with session_scope() as session:
        claimed = notification_service.claim_retryable(
            session=session, now=utcnow(), limit=settings.notification_retry_batch
        )
        rows = [(r.id, r.channel, r.created_by) for r in claimed]
    retried = _dispatch_rows(rows)
    if retried:
        logger.info("Retrying %d failed notification(s).", retried)
    return {"retried": retried}
