"""The development channel: every message becomes a file under var/outbox/<channel>/ that a person can read.

Email is written as a complete `.eml` file (open it in any mail client, or `cat` it); SMS and push as JSON.
The file is named after the notification, so a resend overwrites it instead of adding a second message.
`python -m app.notifications.outbox` lists and shows them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.config import Settings
from app.notifications.channels.base import OutgoingMessage, Receipt, build_email


def outbox_dir(settings: Settings) -> Path:
    """Where the outbox lives."""
    return settings.var_dir / "outbox"


class OutboxSender:
    """Writes messages to files instead of a provider (the default in development)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, message: OutgoingMessage) -> Receipt:
        """Write the message atomically (temp file + rename) and return its path as the provider id."""
        folder = outbox_dir(self.settings) / message.channel
        folder.mkdir(parents=True, exist_ok=True)
        if message.channel == "email":
            path, content = folder / f"{message.reference}.eml", build_email(message, self.settings).as_string()
        else:
            record = {
                "reference": message.reference,
                "to": message.recipient,
                "title": message.subject,
                "text": message.text,
                "data": message.data,
            }
            path, content = folder / f"{message.reference}.json", json.dumps(record, indent=2)
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_text(content, encoding="utf-8")
        os.replace(partial, path)
        return Receipt(provider_message_id=f"outbox:{path.relative_to(self.settings.var_dir)}")

    def close(self) -> None:
        """Nothing is kept open."""
