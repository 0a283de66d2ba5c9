"""Identity tasks: the secret-bearing emails and SMS, security alerts, and hourly cleanup.

The secret-bearing tasks are adapters over one workflow (app/identity/workflows.py), which makes the reset
token, verification token or MFA code inside the task, stores it only hashed, and keys the message by the task
id so a redelivered task never sends twice. Task arguments are an id or the address the client typed; results
are ids and statuses.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.config import get_settings
from app.db import session_scope
from app.engine.task import CourierTask, PermanentError, TransientError, courier_task
from app.identity import service as identity_service
from app.identity import workflows
from app.identity.exceptions import NoPhone, UserNotFound
from app.identity.models import User
from app.identity.workflows import Purpose
from app.notifications import delivery
from app.notifications import service as notification_service
from app.notifications.delivery import DeliveryFailed
from app.notifications.models import Channel, Notification
from app.tasks.notifications import deliver_or_raise, final_attempt

logger = logging.getLogger(__name__)

#: What the password-reset task answers, whether or not the address belongs to a user (no enumeration).
ACCEPTED: dict[str, Any] = {"accepted": True}


def _send_secret(task: CourierTask, purpose: Purpose, user: int | str) -> workflows.Sent:
    """The workflow, its delivery failures turned into the task's retry or dead letter, as is a missing user."""

    def deliver(notification_id: int, secret_context: dict[str, str]) -> str:
        return deliver_or_raise(task, notification_id, secret_context=secret_context).status

    try:
        return workflows.send(purpose=purpose, user=user, attempt=task.request.id, deliver=deliver)
    except (UserNotFound, NoPhone) as exc:
        raise PermanentError(exc.message) from exc


@courier_task("identity.send_password_reset_email")
def send_password_reset_email(self: CourierTask, *, email: str) -> dict[str, Any]:
    """Email a single-use reset link to the user with this address; nothing (same answer) when there is none."""
    _send_secret(self, Purpose.password_reset, email)
    return ACCEPTED


@courier_task("identity.send_account_verification_email")
def send_account_verification_email(self: CourierTask, *, user_id: int) -> dict[str, Any]:
    """Email a link that verifies the user's address."""
    return _send_secret(self, Purpose.email_verification, user_id).as_dict()


@courier_task("identity.send_mfa_code")
def send_mfa_code(self: CourierTask, *, user_id: int) -> dict[str, Any]:
    """Text a fresh MFA code to the user's phone (earlier codes stop working)."""
    return _send_secret(self, Purpose.mfa_code, user_id).as_dict()


@courier_task("identity.send_security_alert")
def send_security_alert(
    self: CourierTask,
    *,
    user_id: int | None = None,
    kind: str,
    details: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """Email the user (if any) and every SECURITY_ALERT_EMAILS address, and push to the user's devices.

    At most one alert per `dedupe_key`: the first task with a key creates one notification per recipient
    under it; any later task with the same key only finishes sending those.
    """
    prefix = "security_alert:" + hashlib.sha256((dedupe_key or f"task:{self.request.id}").encode()).hexdigest()[:32]
    try:
        notification_ids = _alert_rows(prefix, user_id=user_id, kind=kind, details=details or {})
    except IntegrityError as exc:  # a concurrent task with the same key created them first
        raise TransientError(f"security alert {prefix} is being created by another task") from exc
    counts = {"sent": 0, "already": 0, "failed": 0, "pending": 0}
    final = final_attempt(self)
    for notification_id in notification_ids:
        try:
            outcome = delivery.deliver(notification_id, final_attempt=final)
            counts["sent" if outcome.result == "sent" else "already"] += 1
        except DeliveryFailed as exc:
            counts["pending" if exc.transient and not final else "failed"] += 1
    if counts["pending"]:
        raise TransientError(f"security alert: {counts['pending']} recipient(s) hit transient failures")
    if counts["failed"]:
        raise PermanentError(f"security alert: {counts['failed']} recipient(s) refused by the provider")
    return {"kind": kind, "recipients": len(notification_ids), **counts}


def _alert_rows(prefix: str, *, user_id: int | None, kind: str, details: dict[str, Any]) -> list[int]:
    """The alert's notification ids: existing ones under `prefix`, else one new row per recipient."""
    settings = get_settings()
    with session_scope() as session:
        existing = list(
            session.scalars(
                select(Notification.id).where(Notification.dedupe_key.like(f"{prefix}:%")).order_by(Notification.id)
            )
        )
        if existing:
            return existing
        user = session.get(User, user_id) if user_id is not None else None
        recipients: list[tuple[Channel, str]] = []
        if user is not None:
            recipients.append((Channel.email, user.email))
            recipients += [(Channel.push, d.token) for d in identity_service.devices(session=session, user_id=user.id)]
        recipients += [(Channel.email, address) for address in settings.security_alert_recipients]
        data = {"kind": kind, "details": details, "user_label": f"#{user.id} ({user.email})" if user else ""}
        ids = []
        for channel, recipient in dict.fromkeys(recipients):
            digest = hashlib.sha256(f"{channel}:{recipient}".encode()).hexdigest()[:16]
            row = notification_service.create(
                session=session,
                channel=channel,
                recipient=recipient,
                subject=f"Security alert: {kind}",
                body=f"Security alert: {kind}",
                template="security_alert" if channel is Channel.email else "message",
                data=data,
                tier="high",
                dedupe_key=f"{prefix}:{digest}",
            )
            ids.append(row.id)
        if not ids:
            logger.warning("Security alert %s (%s) has no recipient: set SECURITY_ALERT_EMAILS.", prefix, kind)
        return ids


@courier_task("identity.cleanup_expired_sessions")
def cleanup_expired_sessions(self: CourierTask) -> dict[str, int]:
    """Delete expired and long-revoked sessions (hourly)."""
    with session_scope() as session:
        deleted = identity_service.cleanup_expired_sessions(session=session)
    logger.info("Deleted %d expired session(s).", deleted)
    return {"deleted": deleted}


@courier_task("identity.cleanup_expired_tokens")
def cleanup_expired_tokens(self: CourierTask) -> dict[str, int]:
    """Delete expired or used one-time tokens and MFA codes (hourly)."""
    with session_scope() as session:
        deleted = identity_service.cleanup_expired_tokens(session=session)
    logger.info("Deleted %d expired or used token(s) and code(s).", deleted)
    return {"deleted": deleted}
