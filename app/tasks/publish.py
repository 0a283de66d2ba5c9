"""Confirmed publishing for the API: a 202 only after RabbitMQ confirmed the persistent message."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError, OperationalError

from app import idempotency
from app.config import get_settings
from app.constants import TASK_EXCHANGE, TASK_META_KEY, TIER_MAX_PRIORITY, Tier
from app.errors import ServiceUnavailable, Unprocessable
from app.redis_store import get_redis
from app.tasks.celery_app import celery_app
from app.tasks.policy import POLICIES, default_priority

logger = logging.getLogger(__name__)

# The API publishes through task objects (so eager mode works), which needs them registered here too.
celery_app.loader.import_default_modules()


@dataclass(frozen=True)
class Dispatched:
    """What a dispatching endpoint answers with 202."""

    task_id: str
    status_url: str

    def as_dict(self) -> dict[str, str]:
        """JSON body of the 202."""
        return {"task_id": self.task_id, "status_url": self.status_url}


def dispatch(
    name: str,
    *,
    kwargs: dict[str, Any],
    triggered_by: str | None,
    tier: Tier | None = None,
    priority: int | None = None,
    options: dict[str, Any] | None = None,
) -> Dispatched:
    """Publish task `name` and wait for the broker's confirm; `options` are Celery call options (time limits,
    expires) that override the task's for this call.

    Raises:
        ServiceUnavailable: the broker or Redis is unreachable, or the broker refused the message; nothing ran.
        Unprocessable: the priority is outside the tier's range.
    """
    settings = get_settings()
    declared = POLICIES[name]
    tier = tier or declared.tier
    if priority is None:
        priority = declared.priority if declared.priority is not None else default_priority(tier)
    if not 0 <= priority <= TIER_MAX_PRIORITY[tier]:
        raise Unprocessable(f"priority must be between 0 and {TIER_MAX_PRIORITY[tier]} on tier {tier.value}.")
    task_id = str(uuid.uuid4())
    meta_key = TASK_META_KEY.format(task_id=task_id)
    try:
        # Written before the publish so the history recorder can attribute the run as soon as it starts.
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(
            meta_key,
            mapping={
                "name": name,
                "tier": tier.value,
                "triggered_by": triggered_by or "",
                "dispatched_at": repr(time.time()),
            },
        )
        pipe.expire(meta_key, settings.result_expires_s)
        pipe.execute()
    except redis.RedisError as exc:
        raise ServiceUnavailable("The result store (Redis) is unreachable; nothing was dispatched.") from exc
    started = time.perf_counter()
    try:
        celery_app.tasks[name].apply_async(
            kwargs=kwargs,
            task_id=task_id,
            queue=tier.value,
            exchange=TASK_EXCHANGE,
            routing_key=tier.value,
            priority=priority,
            confirm_timeout=settings.publish_timeout_s,
            **{k: v for k, v in (options or {}).items() if v is not None},
        )
    except (OperationalError, KombuError, AMQPError, OSError, TimeoutError) as exc:
        get_redis().delete(meta_key)
        logger.warning("Publishing %s (%s) failed after %.3f s: %r.", name, task_id, time.perf_counter() - started, exc)
        raise ServiceUnavailable("The message broker did not confirm the task; nothing was dispatched.") from exc
    logger.debug(
        "Published %s as %s on %s (confirmed in %.4f s).", name, task_id, tier.value, time.perf_counter() - started
    )
    return Dispatched(task_id=task_id, status_url=settings.status_url(task_id))


def dispatch_once(
    name: str,
    *,
    kwargs: dict[str, Any],
    triggered_by: str,
    idempotency_key: str | None,
    request_body: Any,
    tier: Tier | None = None,
    priority: int | None = None,
    options: dict[str, Any] | None = None,
) -> Dispatched:
    """`dispatch`, honouring an Idempotency-Key: a repeat of the same request returns the first answer."""
    if idempotency_key is None:
        return dispatch(name, kwargs=kwargs, triggered_by=triggered_by, tier=tier, priority=priority, options=options)
    digest = idempotency.fingerprint(name, request_body)
    try:
        first = idempotency.begin(owner=triggered_by, key=idempotency_key, digest=digest)
    except redis.RedisError as exc:
        raise ServiceUnavailable("The result store (Redis) is unreachable; nothing was dispatched.") from exc
    if first is not None:
        return Dispatched(**first)
    try:
        result = dispatch(name, kwargs=kwargs, triggered_by=triggered_by, tier=tier, priority=priority, options=options)
    except BaseException:
        idempotency.abandon(owner=triggered_by, key=idempotency_key)
        raise
    idempotency.complete(owner=triggered_by, key=idempotency_key, digest=digest, response=result.as_dict())
    return result
