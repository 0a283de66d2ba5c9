"""The one small interface every channel implements, and the two ways a delivery can fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from typing import Any, Protocol

from app.config import Settings


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message for one recipient. `reference` (`notification-<id>`) is stable across retries, so
    providers that deduplicate (an Idempotency-Key header, an SMTP Message-ID) see one message."""

    reference: str
    channel: str
    recipient: str
    subject: str
    text: str
    html: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """What the provider answered: its id for the message."""

    provider_message_id: str


class DeliveryError(Exception):
    """A provider did not take the message. `transient` says whether trying again may help."""

    transient = False

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason[:1000]
        self.retry_after = retry_after


class TransientDeliveryError(DeliveryError):
    """Connection refused, timeout, SMTP 4xx, HTTP 5xx or 429: retry with backoff."""

    transient = True


class PermanentDeliveryError(DeliveryError):
    """SMTP 5xx for the recipient, HTTP 4xx: the provider refused it for good."""


class Sender(Protocol):
    """A channel backend. `send` delivers one message; `close` releases a kept connection."""

    def send(self, message: OutgoingMessage) -> Receipt:
        """Deliver `message`, or raise TransientDeliveryError / PermanentDeliveryError."""
        ...

    def close(self) -> None:
        """Release any connection kept between sends."""
        ...


#: Parses a header value the way EmailMessage does when a header is set (encoded-words decoded).
_HEADERS = HeaderRegistry()


def breaks_header(value: str) -> bool:
    """True when `value` would put a line break into an email header: a raw CR or LF, or one decoded from an RFC
    2047 encoded-word (`=?utf-8?q?hi=0D=0ABcc:...?=`), which the email package decodes when the header is set and,
    before Python 3.11.10 / 3.12.5 (CVE-2024-6923), writes out as a real line break: a header of the sender's."""
    return any(char in value for char in "\r\n") or any(char in str(_HEADERS("subject", value)) for char in "\r\n")


def build_email(message: OutgoingMessage, settings: Settings) -> EmailMessage:
    """The MIME email for `message`: text part, optional HTML alternative, and a Message-ID derived from the
    notification, so a receiver can recognise a resend of the same message.

    Raises PermanentDeliveryError when the recipient is not exactly one address (`root,a@x.org`, a group, a display
    name would each add or change the envelope's recipients) or the subject would break the header block."""
    if breaks_header(message.subject):
        raise PermanentDeliveryError("The subject holds a line break (raw or encoded); it cannot be an email header.")
    email = EmailMessage()
    email["From"] = settings.email_from
    try:
        email["To"] = message.recipient
    except ValueError as exc:  # a line break inside the address
        raise PermanentDeliveryError(f"{message.recipient!r} is not one email address.") from exc
    if [address.addr_spec for address in email["To"].addresses] != [message.recipient]:
        raise PermanentDeliveryError(f"{message.recipient!r} is not one email address.")
    email["Subject"] = message.subject
    email["Message-ID"] = f"<{message.reference}@courier>"
    email.set_content(message.text, cte=_transfer_encoding(message.text))
    if message.html is not None:
        email.add_alternative(message.html, subtype="html", cte=_transfer_encoding(message.html))
    return email


def _transfer_encoding(body: str) -> str:
    """7bit when the body is plain ASCII with short lines (links stay intact for a person reading the file),
    else quoted-printable."""
    if body.isascii() and all(len(line) <= 900 for line in body.splitlines()):
        return "7bit"
    return "quoted-printable"
