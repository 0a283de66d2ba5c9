"""CourierTask: the base class of every task, and the `courier_task` decorator that applies the policy table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Ignore

from app.config import get_settings
from app.runs import revocations
from app.tasks.celery_app import celery_app
from app.tasks.policy import POLICIES

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class TransientError(Exception):
    """A failure worth retrying (connection refused, timeout, 5xx/429, SMTP 4xx): backoff, then dead letter."""


class PermanentError(Exception):
    """A failure no retry can fix (bad input, 4xx, SMTP 5xx): dead-lettered at once."""


class CourierTask(Task):  # type: ignore[misc]
    """Base task: late ack (from config), durable-revocation check before the body runs.

    Terminal failures are rejected without requeue (task_acks_on_failure=False), so RabbitMQ moves them to
    the dead-letter exchange; TransientError is retried with exponential backoff and full jitter.
    """

    abstract = True

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse to run a task an admin revoked, even if every worker restarted since (product rule 5)."""
        if revocations.is_revoked(task_id):
            logger.info("Task %s (%s) was revoked before it started; not running it.", task_id, self.name)
            self.backend.mark_as_revoked(task_id, reason="revoked before start", request=self.request)
            raise Ignore()


def courier_task(name: str, **options: Any) -> Callable[[F], F]:
    """Register a bound task under `name` with the retry, time-limit and rate-limit policy from POLICIES."""
    policy = POLICIES[name].resolve(get_settings())
    return celery_app.task(  # type: ignore[no-any-return]
        name=name,
        base=CourierTask,
        bind=True,
        autoretry_for=(TransientError,),
        max_retries=policy.max_retries,
        retry_backoff=policy.retry_backoff_s,
        retry_backoff_max=policy.retry_backoff_max_s,
        retry_jitter=True,
        soft_time_limit=policy.soft_time_limit_s,
        time_limit=policy.time_limit_s,
        rate_limit=policy.rate_limit,
        priority=policy.priority,
        **options,
    )
