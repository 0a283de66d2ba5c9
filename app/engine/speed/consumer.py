"""FastConsumer: Courier's consumer, acking from the event loop at once and sending task events unconfirmed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from app.engine.guarantees.consumer import CourierConsumer

logger = logging.getLogger(__name__)


class FastConsumer(CourierConsumer):
    """CourierConsumer (app/engine/guarantees/consumer.py) with the speed layer's acks and event connection;
    app/engine/install.py selects it when the speed patches are on."""

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

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The task-events connection (Celery's only use of this method), without publisher confirms.

        Events are transient and best-effort by design; waiting for a confirm on each of the three per task
        stalled the consumer's event loop. Task messages, retries and results keep their confirms: they use other
        connections.
        """
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False})
        )
