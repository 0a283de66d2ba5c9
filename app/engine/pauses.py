"""Paused tiers on the worker side: a boot step that skips them, and the remote-control commands that pause
and resume them live. The durable state is the `queue_pauses` table (app/operations), so a pause holds across
worker restarts: a worker that boots reads it before its consumer starts.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.worker.control import control_command, ok

from app.db import session_scope
from app.operations import service as operations

logger = logging.getLogger(__name__)

#: The queues this worker was started to consume (its -Q), before any pause; set at boot.
_configured: set[str] = set()


class SkipPausedQueues(bootsteps.StartStopStep):  # type: ignore[misc]
    """Before the consumer starts, drop the paused tiers from the queues this worker consumes."""

    label = "Courier paused tiers"

    def start(self, worker: Any) -> None:
        queues = worker.app.amqp.queues
        _configured.clear()
        _configured.update(queues.consume_from)
        try:
            with session_scope() as session:
                stopped = operations.paused_names(session=session) & _configured
        except Exception:  # a hook failure must not kill the worker; a live broadcast can still pause
            logger.exception("Could not read the paused tiers; consuming every configured queue.")
            return
        if stopped:
            queues.deselect(sorted(stopped))
            logger.warning("Not consuming paused tier(s): %s.", ", ".join(sorted(stopped)))


#: Registered under the name app.operations.service.PAUSE_COMMAND.
@control_command(args=[("queue", str)], signature="<queue>")  # type: ignore[untyped-decorator]
def courier_pause(state: Any, queue: str) -> dict[str, Any]:
    """Stop consuming `queue` now, if this worker consumes it (unacked messages go back to the queue)."""
    consumer = state.consumer
    if queue not in _configured and not consumer.task_consumer.consuming_from(queue):
        return {"skipped": f"{queue} is not consumed here"}
    if consumer.task_consumer.consuming_from(queue):
        consumer.cancel_task_queue(queue)
    logger.warning("Paused tier %s.", queue)
    return ok(f"paused {queue}")  # type: ignore[no-any-return]


#: Registered under the name app.operations.service.RESUME_COMMAND.
@control_command(args=[("queue", str)], signature="<queue>")  # type: ignore[untyped-decorator]
def courier_resume(state: Any, queue: str) -> dict[str, Any]:
    """Consume `queue` again, if this worker was started to consume it."""
    if queue not in _configured:
        return {"skipped": f"{queue} is not configured here"}
    state.consumer.add_task_queue(queue)
    logger.warning("Resumed tier %s.", queue)
    return ok(f"resumed {queue}")  # type: ignore[no-any-return]
