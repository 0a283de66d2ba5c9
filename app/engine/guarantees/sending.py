"""CourierAMQP: Celery's task-message sender, publishing every task message as mandatory and declaring nothing.

Celery publishes a task message (`apply_async`: the sync `dispatch()`, a task's retry into a delay queue, a retry
after a lost worker, beat) without the `mandatory` flag, so a message RabbitMQ cannot route (its queue deleted or
unbound, its node down) is confirmed and dropped. Here each one is mandatory, and the channel raises
`Unroutable` for a returned message (app/engine/guarantees/returns.py): the publisher gets an error
(a 503 at the API, a dead letter for a retry, a logged SchedulingError in beat), never a silent drop.

Celery also declares the target queue before it publishes, once per connection: a queue deleted after that was
not declared again, and one deleted before it was re-created by whichever connection came first, without
anyone noticing. Courier's topology is declared by `python -m app.cli topology declare` (and checked by each
worker at boot), so publishers declare nothing: a missing queue is an error every time, not some of the time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.app.amqp import AMQP

#: The key of a task's request dict that holds an object of the worker process, never a header: the attempt's
#: HandOff (app/engine/speed/pool.py). Celery's request context copies a request dict's unknown keys into its
#: custom headers, and those into every message published from the request (a retry, a replace), so the sender
#: drops it from each task message.
HANDOFF_KEY = "courier_handoff"


class CourierAMQP(AMQP):  # type: ignore[misc]
    """Selected by `Celery(amqp=...)` (app/engine/install.py)."""

    def _create_task_sender(self) -> Callable[..., Any]:
        send = super()._create_task_sender()

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            if isinstance(message.headers, dict):
                message.headers.pop(HANDOFF_KEY, None)
            extra = options.get("headers")  # (Celery merges these into the message's headers)
            if isinstance(extra, dict) and HANDOFF_KEY in extra:
                options["headers"] = {key: value for key, value in extra.items() if key != HANDOFF_KEY}
            options["mandatory"] = True
            if options.get("declare") is None:
                options["declare"] = []
            return send(producer, name, message, **options)

        return send_task_message


def republish(
    producer: Any,
    body: Any,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any],
    content_type: str | None,
    content_encoding: str | None,
    properties: dict[str, Any],
    fallback_correlation_id: str | None = None,
) -> None:
    """Publish a message that already exists (a dead letter's replay, an attempt dead-lettered with its reason) as
    it was: persistent, mandatory (an unroutable one raises `returns.Unroutable`), its priority, correlation
    id (or `fallback_correlation_id`) and reply-to kept, one quick retry if the connection had dropped."""
    producer.publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        headers=headers,
        content_type=content_type,
        content_encoding=content_encoding,
        priority=properties.get("priority"),
        correlation_id=properties.get("correlation_id") or fallback_correlation_id,
        reply_to=properties.get("reply_to"),
        delivery_mode=2,
        mandatory=True,
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0.1},
    )
