"""CourierRequest: Celery's worker-side request, with the two paths that would ack a message turned to reject,
and a Redis outage retried instead of taken for the task's failure.

Stock Celery acks a message whose hard time limit struck and a message that expired before it ran: both
would be lost. Here both are rejected without requeue, so RabbitMQ moves them to the dead-letter exchange
(the failure and the reason are already in the result backend when that happens).

A failure that is a Redis outage on the worker's own path (app/engine/guarantees/outages.py) is put back in a
delay queue with backoff; past OUTAGE_RETRY_MAX it is published to the dead-letter exchange with its reason in
headers (a reject cannot carry one, and the result backend that would is the thing that is down).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request
from celery.worker.state import task_ready

from app.config import get_settings
from app.constants import (
    DEAD_ERROR_CLASS_HEADER,
    DEAD_ERROR_HEADER,
    DEAD_EXCHANGE_HEADER,
    DEAD_LETTER_EXCHANGE,
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    OUTAGE_RETRIES_HEADER,
)
from app.deadletters.models import Reason
from app.engine.guarantees import outages
from app.engine.guarantees.sending import republish

logger = logging.getLogger(__name__)

#: Headers RabbitMQ owns (x-death and friends); never republished.
_BROKER_HEADER = re.compile(r"^x-(death|first-death-|last-death-)")


class CourierRequest(Request):  # type: ignore[misc]
    """A request whose hard-timeout and expiry paths dead-letter instead of acking."""

    _dead_letter_instead_of_ack = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Celery's, refusing a `timelimit` header it cannot use (InvalidTaskError: the consumer rejects the message,
        so it is dead-lettered as malformed). Celery takes any truthy value and unpacks it only when the task is
        handed to the pool: `[None]`, `"x"` or `[1, 2, 3]` raised there, and when the pool was full that was in
        the event loop, which stopped the worker ("Unrecoverable error"); every restart took the message again.

        A body whose args are not a list, or whose kwargs or embed are not objects, is refused the same way: Celery's
        tracer meets `kwargs` that are not a mapping before it has a request to fail, and returns it as a success,
        so the message was acked and lost, with no result and no dead letter."""
        super().__init__(*args, **kwargs)
        self.time_limits = _time_limits(self._request_dict.get("timelimit"))
        _check_body(self._args, self._kwargs, self._body if self._decoded else self._message.payload)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Hard limit: Celery records the failure, then would ack; we dead-letter instead."""
        if not soft:
            self._dead_letter_instead_of_ack = True
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """A hard time limit can reach here before `on_timeout`; either way it must not be acked. A Redis outage
        is put back to run again, not failed."""
        exc = getattr(exc_info, "exception", None)
        if isinstance(getattr(exc, "exc", exc), TimeLimitExceeded):
            self._dead_letter_instead_of_ack = True
        outage = outages.cause(exc)
        if outage is not None and self.task.acks_late and not self.acknowledged:
            task_ready(self)  # as Celery's on_failure does first
            if not self._retry_after_outage(outage):
                self._dead_letter_outage(outage)
            return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _retry_after_outage(self, outage: outages.InfraUnavailable) -> bool:
        """Publish this attempt again into a delay queue (same `retries`, one more outage retry) and ack this
        message; False when the budget is spent or the publish failed (then nothing was acked)."""
        settings = get_settings()
        context = self._context
        done = int((context.headers or {}).get(OUTAGE_RETRIES_HEADER) or 0)
        if done >= settings.outage_retry_max:
            return False
        delay = outages.backoff_s(done, settings)
        headers = {k: v for k, v in (context.headers or {}).items() if not _BROKER_HEADER.match(str(k))}
        headers[OUTAGE_RETRIES_HEADER] = done + 1
        try:
            self.task.signature_from_request(context, countdown=delay, headers=headers).apply_async()
        except Exception as exc:
            logger.error("Could not put %s[%s] back after a Redis outage: %r.", self.task_name, self.id, exc)
            return False
        outages.redis_outage.failed(outage)
        logger.debug(
            "%s[%s] runs again in about %d s (outage retry %d of %d).",
            self.task_name,
            self.id,
            delay,
            done + 1,
            settings.outage_retry_max,
        )
        self.acknowledge()
        return True

    def _dead_letter_outage(self, outage: outages.InfraUnavailable) -> None:
        """Publish the message to the dead-letter exchange with its reason (`infra_unavailable`) and the Redis error
        in headers, then ack it; if even that fails, reject it (RabbitMQ dead-letters it, without the reason)."""
        message = self._message
        delivery = self.delivery_info or {}
        properties = message.properties or {}
        headers = {k: v for k, v in (message.headers or {}).items() if not _BROKER_HEADER.match(str(k))}
        headers.update(
            {
                DEAD_REASON_HEADER: Reason.infra_unavailable.value,
                DEAD_ERROR_CLASS_HEADER: outage.error_class,
                DEAD_ERROR_HEADER: str(outage)[:2000],
                DEAD_QUEUE_HEADER: delivery.get("routing_key"),
                DEAD_EXCHANGE_HEADER: delivery.get("exchange"),
            }
        )
        try:
            with self.task.app.producer_or_acquire() as producer:
                republish(
                    producer,
                    message.body,
                    exchange=DEAD_LETTER_EXCHANGE,
                    routing_key=str(delivery.get("routing_key") or ""),
                    headers=headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    properties=properties,
                )
        except Exception as exc:
            logger.error(
                "Could not dead-letter %s[%s] with its reason; rejecting it: %r.", self.task_name, self.id, exc
            )
            self.reject(requeue=False)
            return
        logger.error("Dead-lettering %s[%s]: %s (outage retries spent).", self.task_name, self.id, outage)
        self.acknowledge()

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


def _time_limits(value: Any) -> tuple[float | None, float | None]:
    """A message's `timelimit` header, `[hard, soft]` in seconds (None, or 0, for the task's own), as the pool
    takes it; InvalidTaskError for anything else."""
    if not value:
        return (None, None)
    if isinstance(value, list | tuple) and len(value) == 2 and all(_limit(limit) for limit in value):
        return (value[0], value[1])
    raise InvalidTaskError(f"invalid timelimit value {str(value)[:100]!r}: expected [hard, soft] seconds or nulls")


def _limit(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _check_body(args: Any, kwargs: Any, payload: Any) -> None:
    """InvalidTaskError unless the body is `[args (a list), kwargs (an object), embed (an object or null)]`."""
    embed = payload[2] if isinstance(payload, list | tuple) and len(payload) > 2 else None
    if not isinstance(args, list | tuple) or not isinstance(kwargs, Mapping) or not isinstance(embed, Mapping | None):
        raise InvalidTaskError(
            "invalid body: expected [args (a list), kwargs (an object), embed (an object or null)], got "
            f"[{type(args).__name__}, {type(kwargs).__name__}, {type(embed).__name__}]"
        )
