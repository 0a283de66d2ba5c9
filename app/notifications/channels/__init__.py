"""Channel backends behind one interface (`Sender`): the outbox (development), SMTP, and HTTP SMS/push."""

from __future__ import annotations

from app.config import Settings
from app.notifications.channels.base import (
    DeliveryError,
    OutgoingMessage,
    PermanentDeliveryError,
    Receipt,
    Sender,
    TransientDeliveryError,
)
from app.notifications.channels.http import HttpSender
from app.notifications.channels.outbox import OutboxSender
from app.notifications.channels.smtp import SmtpSender

__all__ = [
    "DeliveryError",
    "OutgoingMessage",
    "PermanentDeliveryError",
    "Receipt",
    "Sender",
    "TransientDeliveryError",
    "sender_for",
]


def sender_for(channel: str, settings: Settings) -> Sender:
    """The backend configured for `channel` (EMAIL_BACKEND, SMS_BACKEND, PUSH_BACKEND)."""
    if channel == "email":
        return SmtpSender(settings) if settings.email_backend == "smtp" else OutboxSender(settings)
    if channel == "sms" and settings.sms_backend == "http":
        return _http(
            settings,
            settings.sms_provider_url,
            settings.sms_provider_api_key,
            settings.sms_payload_fields,
            sender=settings.sms_sender,
        )
    if channel == "push" and settings.push_backend == "http":
        return _http(settings, settings.push_provider_url, settings.push_provider_api_key, settings.push_payload_fields)
    if channel in ("sms", "push"):
        return OutboxSender(settings)
    raise ValueError(f"unknown channel {channel!r}")


def _http(settings: Settings, url: str, api_key: str, fields: str, *, sender: str | None = None) -> HttpSender:
    """An HTTP provider's sender; push has no sender id, so its payload never carries one."""
    return HttpSender(
        url=url,
        api_key=api_key,
        fields=fields,
        sender=sender,
        id_field=settings.provider_message_id_field,
        timeout_s=settings.notification_http_timeout_s,
    )
