"""CourierConsumer: Celery's consumer, with malformed messages dead-lettered instead of dropped or fatal.

Stock Celery acks (drops) a body it cannot decode, and a `task` header without `id` raises KeyError out of
the consumer, which stops the worker; the message is requeued and kills every worker that takes it. Here both
are rejected without requeue, so they land in the dead-letter queue as `malformed` and the worker goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

logger = logging.getLogger(__name__)


class CourierConsumer(Consumer):  # type: ignore[misc]
    """The worker's consumer; selected by the `worker_consumer` setting."""

    #: The thread running the consumer's event loop.
    _loop_thread: int | None = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        super().start()

    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Ack (or reject) now when called from the event loop's own thread, instead of at the loop's next turn.

        Celery defers it to the next turn, after the loop's poll. A worker that has read every prefetched message
        at once (app/engine/speed/amqp_transport.py) then has nothing left to wake that poll: the acks, and with them
        the broker's next deliveries, waited for a timer. The pool's batch of acks goes out in one send
        (`batched_writes`). From any other thread, Celery's way (which wakes the loop) stands.
        """
        if self.hub is None or threading.get_ident() != self._loop_thread:
            return super().call_soon_ack(p, *args, **kwargs)
        try:
            p(*args, **kwargs)
        except Exception:  # as Celery's own immediate path: a failed ack is logged, never raised into the pool
            logger.exception("Acknowledging a message failed.")
        return p

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """Dead-letter a message whose body cannot be decoded (Celery would ack and drop it)."""
        logger.error(
            "Dead-lettering a message whose body cannot be decoded (content type %r, headers %r): %r.",
            message.content_type,
            _safe_headers(message),
            exc,
        )
        message.reject_log_error(logger, self.connection_errors)

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The task-events connection (Celery's only use of this method), without publisher confirms.

        Events are transient and best-effort by design; waiting for a confirm on each of the three per task
        stalled the consumer's event loop (the benchmark measured the run history at a third of drain
        throughput). Task messages, retries and results keep their confirms: they use other connections.
        """
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False})
        )

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
