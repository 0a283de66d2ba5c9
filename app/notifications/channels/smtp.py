"""Email over real SMTP (plain, STARTTLS or SSL, optional login), keeping one connection across sends."""

from __future__ import annotations

import logging
import smtplib
import ssl

from app.config import Settings
from app.notifications.channels.base import (
    OutgoingMessage,
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
    build_email,
)

logger = logging.getLogger(__name__)


class SmtpSender:
    """Sends through SMTP_HOST:SMTP_PORT. SMTP 4xx and network failures are transient, 5xx permanent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        client: smtplib.SMTP
        if settings.smtp_security == "ssl":
            client = smtplib.SMTP_SSL(
                settings.smtp_host,
                settings.smtp_port,
                timeout=settings.smtp_timeout_s,
                context=ssl.create_default_context(),
            )
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s)
            if settings.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            client.login(settings.smtp_user, settings.smtp_password)
        return client

    def send(self, message: OutgoingMessage) -> Receipt:
        """Send one email; reconnects once when a kept connection was dropped by the server."""
        email = build_email(message, self.settings)
        for attempt in (1, 2):
            try:
                if self._client is None:
                    self._client = self._connect()
                refused = self._client.send_message(email)
            except smtplib.SMTPServerDisconnected as exc:
                self._client = None
                if attempt == 1:
                    continue
                raise TransientDeliveryError(f"SMTP server disconnected: {exc}") from exc
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = next(iter(exc.recipients.values()))
                raise _by_code(code, reply) from exc
            except smtplib.SMTPResponseException as exc:
                self.close()
                raise _by_code(exc.smtp_code, exc.smtp_error) from exc
            except (OSError, smtplib.SMTPException) as exc:
                self.close()
                raise TransientDeliveryError(f"SMTP server unreachable: {exc!r}") from exc
            if refused:
                code, reply = next(iter(refused.values()))
                raise _by_code(code, reply)
            return Receipt(provider_message_id=str(email["Message-ID"]))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """QUIT the kept connection, if any."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _by_code(code: int, reply: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {code}: {text}"
    return TransientDeliveryError(reason) if 400 <= code < 500 else PermanentDeliveryError(reason)
