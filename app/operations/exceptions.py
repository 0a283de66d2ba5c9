"""Errors of the operations domain."""

from __future__ import annotations

from app.errors import Conflict, Unprocessable


class UnknownQueue(Unprocessable):
    """The name is not a queue this operation applies to."""

    def __init__(self, name: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{name!r} is not one of: {', '.join(allowed)}.")


class ConfirmationRequired(Conflict):
    """A purge needs the confirmation token of a first, dry call."""

    def __init__(self, queue: str, messages: int, token: str, expires_in_s: int) -> None:
        super().__init__(
            f"Purging {queue!r} drops {messages} message(s) for good. Repeat the request with this confirm_token "
            f"within {expires_in_s} s to do it.",
            details={"queue": queue, "messages": messages, "confirm_token": token, "expires_in_s": expires_in_s},
        )


class InvalidConfirmation(Conflict):
    """The confirmation token is unknown, expired, or was issued for another queue or admin."""

    def __init__(self) -> None:
        super().__init__("The confirm_token is unknown, expired, or for another queue or admin; ask for a new one.")
