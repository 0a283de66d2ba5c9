"""Notification errors; each becomes a 4xx JSON answer through the CourierError handler."""

from __future__ import annotations

from app.errors import Conflict, NotFound


class NotificationNotFound(NotFound):
    """No notification has this id (or the caller may not see it)."""

    def __init__(self, notification_id: int) -> None:
        super().__init__(f"No notification {notification_id} exists.", details={"notification_id": notification_id})


class NotCancellable(Conflict):
    """Only a pending notification can be cancelled."""

    def __init__(self, notification_id: int, status: str) -> None:
        super().__init__(
            f"Notification {notification_id} is {status}; only a pending notification can be cancelled.",
            details={"notification_id": notification_id, "status": status},
        )
