"""CourierConsumer: Celery's consumer, with malformed messages dead-lettered instead of dropped or fatal.

Stock Celery acks (drops) a body it cannot decode, and a `task` header without `id` raises KeyError out of
the consumer, which stops the worker; the message is requeued and kills every worker that takes it. Here both
are rejected without requeue, so they land in the dead-letter queue as `malformed` and the worker goes on.

Its blueprint leaves out Celery's native delayed delivery (`DelayedDelivery`, which Celery 5.5+ starts when it
sees quorum queues): it declares 28 `celery_delayed_*` queues and binds every queue to their exchanges, and
warns three times that it cannot work with a direct exchange. Courier's retries wait in its own delay queues
(app/engine/topology.py), so that step is only dead weight on a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

logger = logging.getLogger(__name__)


#: Celery's consumer step that Courier leaves out (native delayed delivery; see above).
DELAYED_DELIVERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class CourierConsumer(Consumer):  # type: ignore[misc]
    """The worker's consumer in both engine modes; app/engine/install.py selects it (`worker_consumer`)."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps without native delayed delivery."""

        default_steps = [step for step in Consumer.Blueprint.default_steps if step != DELAYED_DELIVERY_STEP]

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """Dead-letter a message whose body cannot be decoded (Celery would ack and drop it)."""
        logger.error(
            "Dead-lettering a message whose body cannot be decoded (content type %r, headers %r): %r.",
            message.content_type,
            _safe_headers(message),
            exc,
        )
        message.reject_log_error(logger, self.connection_errors)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], Any]:
        """Wrap Celery's handler so no malformed message can raise out of the consumer."""
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            try:
                return handle(message)
            except Exception as exc:  # e.g. KeyError('id') from a task header without an id
                logger.error("Dead-lettering a malformed task message (headers %r): %r.", _safe_headers(message), exc)
                if not message.acknowledged:
                    message.reject_log_error(logger, self.connection_errors)
                return None

        return on_task_received


def _safe_headers(message: Message) -> dict[str, Any]:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return {k: headers[k] for k in ("task", "id", "retries") if k in headers}
