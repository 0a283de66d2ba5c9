"""CourierTask: the base class of every task, and the `courier_task` decorator that applies the policy table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Ignore, Reject

from app.config import get_settings
from app.constants import Tier
from app.db import OUTAGE_ERRORS as DATABASE_OUTAGE
from app.engine import topology
from app.engine.celery_app import TRACE_LOGGER, celery_app
from app.engine.guarantees import outages
from app.engine.guarantees import starts as starts_check
from app.engine.guarantees.request import CourierRequest
from app.engine.guarantees.returns import Unroutable
from app.engine.policy import POLICIES
from app.engine.speed.pool import HandOff
from app.runs import journal

logger = logging.getLogger(__name__)
_trace_logger = logging.getLogger(TRACE_LOGGER)

F = TypeVar("F", bound=Callable[..., Any])


class TransientError(Exception):
    """A failure worth retrying (connection refused, timeout, 5xx/429, SMTP 4xx): backoff, then dead letter. The
    database's outage errors (app.db.OUTAGE_ERRORS) are retried the same way."""


class PermanentError(Exception):
    """A failure no retry can fix (bad input, 4xx, SMTP 5xx): dead-lettered at once."""


class WorkerKilledRepeatedly(Exception):  # noqa: N818 (it names what happened, like WorkerLostError)
    """An attempt started more than MAX_STARTS_PER_ATTEMPT times and never finished: it kills its worker.

    A plain failure (not a WorkerLostError, which Celery would retry): it is dead-lettered as `worker_lost`.
    """


class CourierTask(Task):  # type: ignore[misc]
    """Base task: late ack (from config), durable-revocation check before the body runs.

    Terminal failures are rejected without requeue (task_acks_on_failure=False), so RabbitMQ moves them to
    the dead-letter exchange; TransientError is retried with exponential backoff and full jitter.
    """

    abstract = True
    #: The worker-side request of every Courier task, in both engine modes (Celery reads it from the task class).
    Request = CourierRequest

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before the body runs: refuse a revoked task, and dead-letter an attempt that keeps killing workers.

        The answer comes from app/engine/guarantees/starts.py: EXISTS on the revocation key and INCR of this
        attempt's start count, asked by the worker's main process for every job it hands to its pool children in
        one round trip (it rides the attempt's HandOff, app/engine/speed/pool.py), or here when the task runs any
        other way (eagerly, inline, or on Celery's stock pools). An attempt that starts more than
        MAX_STARTS_PER_ATTEMPT times never finished (its whole worker died each time: classic queues count no
        redeliveries), so it is rejected to the dead-letter queue as `worker_lost`. The run's start is journaled
        with its outcome (app/runs/journal.py).

        Redis unreachable here is an outage, not this task's failure: it is reported as Reject(InfraUnavailable),
        which stores nothing, and the worker's main process puts the attempt back (app/engine/guarantees/request.py).
        """
        settings = get_settings()
        self.request.courier_started = time.monotonic()  # the journaled runtime (app/runs/journal.py)
        handoff = HandOff.of(self.request)
        answer = handoff.take_start_answer() if handoff is not None else None
        try:
            revoked, starts = answer or starts_check.check([(task_id, self.request.retries or 0)])[0]
        except outages.OUTAGE_ERRORS as exc:
            outage = outages.InfraUnavailable.at("the start check", exc)
            logger.warning("Task %s[%s] cannot start: %s.", self.name, task_id, outage)
            raise Reject(outage, requeue=False) from None
        if revoked:
            logger.info("Task %s (%s) was revoked before it started; not running it.", task_id, self.name)
            self.backend.mark_as_revoked(task_id, reason="revoked before start", request=self.request)
            raise Ignore()
        if settings.history_enabled:
            self.request.courier_start_event = journal.started(task_id=task_id, request=self.request)
        if starts > settings.max_starts_per_attempt:
            lost = WorkerKilledRepeatedly(
                f"attempt {self.request.retries or 0} of {self.name}[{task_id}] started {starts - 1} times "
                "without finishing: its worker died each time"
            )
            logger.error("Dead-lettering %s[%s]: %s.", self.name, task_id, lost)
            raise lost

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Log the retry (Celery's own line is off with the success lines: app/engine/celery_app.py)."""
        if not _trace_logger.isEnabledFor(logging.INFO):
            logger.info("Task %s[%s] retry: %r", self.name, task_id, exc)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's retry; a retry RabbitMQ could not route (its delay queue missing or unbound) fails the task with
        `Unroutable` itself, so it is stored and dead-lettered as `unroutable` (Celery would wrap it in a Reject)."""
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if isinstance(exc.reason, Unroutable):
                raise exc.reason from None
            raise

    def signature_from_request(
        self, request: Any = None, args: Any = None, kwargs: Any = None, queue: Any = None, **extra: Any
    ) -> Any:
        """Route a delayed retry through a delay queue instead of an ETA held in worker memory.

        Celery's retry publishes the next attempt with a countdown, which a worker holds unacked in memory
        (bounded by worker_eta_task_limit and RabbitMQ's consumer timeout). Here the message waits in
        `delay.<tier>.<seconds>` on the broker and dead-letters back into its tier when the TTL ends.
        """
        request = self.request if request is None else request
        countdown, eta = extra.pop("countdown", None), extra.pop("eta", None)
        if eta is not None:
            when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
            countdown = (when - datetime.now(UTC)).total_seconds()
        if countdown and countdown > 0 and queue is None and not self.app.conf.task_always_eager:
            queue = topology.delay_queue(_tier_of(request), topology.delay_bucket(countdown))
            # Explicit exchange and routing key: otherwise the task's route (its tier) would win over the queue.
            extra["exchange"], extra["routing_key"] = queue.exchange.name, queue.routing_key
        elif countdown:
            extra["countdown"] = countdown
        return super().signature_from_request(request, args, kwargs, queue=queue, **extra)


def _tier_of(request: Any) -> Tier:
    """The tier a request came from: its routing key (work queue name), else its task's policy tier."""
    routing_key = str((request.delivery_info or {}).get("routing_key"))
    if routing_key in Tier.__members__:
        return Tier(routing_key)
    return POLICIES[request.task].tier if request.task in POLICIES else Tier.medium


def courier_task(name: str, **options: Any) -> Callable[[F], F]:
    """Register a bound task under `name` with the retry, time-limit and rate-limit policy from POLICIES."""
    policy = POLICIES[name].resolve(get_settings())
    return celery_app.task(  # type: ignore[no-any-return]
        name=name,
        base=CourierTask,
        bind=True,
        # A database outage is transient too: a task meeting one was dead-lettered `failed` at once, on every tick
        # of a periodic task while it lasted.
        autoretry_for=(TransientError, *DATABASE_OUTAGE),
        max_retries=policy.max_retries,
        # Celery draws the jittered countdown with randrange, which needs whole seconds.
        retry_backoff=max(1, round(policy.retry_backoff_s)),
        retry_backoff_max=max(1, round(policy.retry_backoff_max_s)),
        default_retry_delay=max(1, round(policy.retry_backoff_s)),
        retry_jitter=True,
        soft_time_limit=policy.soft_time_limit_s,
        time_limit=policy.time_limit_s,
        rate_limit=policy.rate_limit,
        priority=policy.priority,
        **options,
    )
