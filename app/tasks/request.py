"""CourierRequest: Celery's worker-side request, with the two paths that would ack a message turned to reject.

Stock Celery acks a message whose hard time limit struck and a message that expired before it ran: both
would be lost. Here both are rejected without requeue, so RabbitMQ moves them to the dead-letter exchange
(the failure and the reason are already in the result backend when that happens).
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery.worker.request import Request

logger = logging.getLogger(__name__)


class CourierRequest(Request):  # type: ignore[misc]
    """A request whose hard-timeout and expiry paths dead-letter instead of acking."""

    _dead_letter_instead_of_ack = False

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Hard limit: Celery records the failure, then would ack; we dead-letter instead."""
        if not soft:
            self._dead_letter_instead_of_ack = True
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """A hard time limit can reach here before `on_timeout`; either way it must not be acked."""
        exc = getattr(exc_info, "exception", None)
        if isinstance(getattr(exc, "exc", exc), TimeLimitExceeded):
            self._dead_letter_instead_of_ack = True
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        """An expired message is dead-lettered (reason `expired`); a revoked one is acked as usual."""
        if expired:
            self._dead_letter_instead_of_ack = True
        super()._announce_revoked(reason, terminated, signum, expired)

    def acknowledge(self) -> None:
        """Ack, unless this request must end in the dead-letter queue."""
        if self._dead_letter_instead_of_ack and self.task.acks_late:
            logger.warning("Dead-lettering %s[%s] instead of acking it (timeout or expiry).", self.name, self.id)
            self.reject(requeue=False)
            return
        super().acknowledge()
