"""Read the development outbox: `python -m app.notifications.outbox [list | show N | latest [CHANNEL]]`.

With EMAIL_BACKEND / SMS_BACKEND / PUSH_BACKEND at `outbox` (the development default), every message is a file
under var/outbox/<channel>/: `.eml` for email, `.json` for SMS and push.
"""

from __future__ import annotations

import email
import sys
from email.policy import default as default_policy
from pathlib import Path

from app.config import get_settings
from app.notifications.channels.outbox import outbox_dir


def messages(channel: str | None = None) -> list[Path]:
    """Outbox files, oldest first (optionally of one channel)."""
    root = outbox_dir(get_settings())
    folders = [root / channel] if channel else sorted(p for p in root.glob("*") if p.is_dir())
    files = [f for folder in folders for f in folder.glob("notification-*") if not f.name.endswith(".part")]
    return sorted(files, key=lambda f: f.stat().st_mtime)


def describe(path: Path) -> str:
    """A message as a person reads it: headers and the text body (email), or the JSON (SMS, push)."""
    if path.suffix != ".eml":
        return path.read_text(encoding="utf-8")
    message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return f"From: {message['From']}\nTo: {message['To']}\nSubject: {message['Subject']}\n\n{text}"


def main(argv: list[str]) -> int:
    """Entry point: list (default), show N (by position in the list), latest [CHANNEL]."""
    command = argv[0] if argv else "list"
    if command == "list":
        for index, path in enumerate(messages(), start=1):
            print(f"{index:4d}  {path.parent.name:5s}  {path.name}")  # noqa: T201
        return 0
    if command == "show" and len(argv) == 2 and argv[1].isdigit():
        found = messages()
        if not 1 <= int(argv[1]) <= len(found):
            print(f"No message {argv[1]}; the outbox has {len(found)}.", file=sys.stderr)  # noqa: T201
            return 1
        print(describe(found[int(argv[1]) - 1]))  # noqa: T201
        return 0
    if command == "latest":
        found = messages(argv[1] if len(argv) > 1 else None)
        if not found:
            print("The outbox is empty.", file=sys.stderr)  # noqa: T201
            return 1
        print(describe(found[-1]))  # noqa: T201
        return 0
    print(__doc__, file=sys.stderr)  # noqa: T201
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
