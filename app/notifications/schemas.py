"""Pydantic schemas of the notification API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.constants import Tier
from app.notifications.channels.base import breaks_header
from app.notifications.models import Channel, Status

#: A run of address characters: no whitespace or control character, and none of the characters that make an
#: address header hold several recipients, a group or a display name (`root,a@x.org`, `g:a@x.org;`, `x<a@x.org>`).
_ADDRESS_PART = r'[^@\s\x00-\x1f\x7f,;:<>()\[\]"\\]+'
#: One plain address. `\Z`, not `$`: `$` also matches before a final newline, which ended the email's header block.
EMAIL_PATTERN = re.compile(rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}\Z")
PHONE_PATTERN = re.compile(r"^\+[1-9][0-9]{6,14}\Z")

Recipient = Annotated[str, Field(min_length=1, max_length=500)]


def check_recipient(channel: Channel, recipient: str) -> None:
    """Raise ValueError when `recipient` is not an address of `channel` (email, E.164 phone, device token)."""
    if channel is Channel.email and not EMAIL_PATTERN.match(recipient):
        raise ValueError(f"{recipient!r} is not an email address")
    if channel is Channel.sms and not PHONE_PATTERN.match(recipient):
        raise ValueError(f"{recipient!r} is not an E.164 phone number (+<country><number>)")


def check_subject(channel: Channel, subject: str | None, data: dict[str, Any] | None) -> None:
    """Raise ValueError when an email's subject holds a line break, raw or RFC 2047-encoded: as a header it would
    end the header block or add headers of the sender's choosing. `data["subject"]` counts too: the message
    template renders it in the given subject's place."""
    if channel is not Channel.email:
        return
    for value in (subject, (data or {}).get("subject")):
        if isinstance(value, str) and breaks_header(value):
            raise ValueError("subject must be one line: no line break, raw or encoded (=?...?=)")


class NotificationBase(BaseModel):
    """What to send, on which channel."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel
    subject: str | None = Field(default=None, max_length=300)
    body: str = Field(min_length=1, max_length=20_000)
    data: dict[str, Any] | None = None
    tier: Tier = Tier.high


class NotificationCreate(NotificationBase):
    """One message to one recipient, now or at `send_at` (timezone-aware)."""

    recipient: Recipient
    send_at: datetime | None = None

    @model_validator(mode="after")
    def _check(self) -> NotificationCreate:
        check_recipient(self.channel, self.recipient)
        check_subject(self.channel, self.subject, self.data)
        if self.send_at is not None and self.send_at.tzinfo is None:
            raise ValueError("send_at must carry a timezone (e.g. 2026-11-24T08:00:00Z)")
        return self


class BulkCreate(NotificationBase):
    """The same message to many recipients, sent in chunks by one medium-tier task."""

    recipients: list[Recipient] = Field(min_length=1, max_length=10_000)
    tier: Tier = Tier.medium

    @model_validator(mode="after")
    def _check(self) -> BulkCreate:
        check_subject(self.channel, self.subject, self.data)
        for recipient in self.recipients:
            check_recipient(self.channel, recipient)
        if len(set(self.recipients)) != len(self.recipients):
            raise ValueError("recipients must be distinct")
        return self


class NotificationRead(BaseModel):
    """A notification as its sender sees it (the body of a message that carries a secret is never kept)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    channel: Channel
    recipient: str
    subject: str | None
    template: str | None
    tier: str
    status: Status
    attempts: int
    send_at: datetime | None
    sent_at: datetime | None
    provider_message_id: str | None
    last_error: str | None
    batch_id: str | None
    created_at: datetime


class NotificationDispatched(BaseModel):
    """The 202 answer: the task, and the notification it sends."""

    task_id: str
    status_url: str
    notification_id: int
    notification_url: str


class BulkDispatched(BaseModel):
    """The 202 answer of a bulk send: the task (its status URL shows progress) and the batch."""

    task_id: str
    status_url: str
    batch_id: str
    total: int
