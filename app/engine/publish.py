"""Confirmed publishing: a 202 only after RabbitMQ confirmed the persistent message.

Two paths share everything but the publish itself:
- `dispatch_async` (the API's hot path): aiormq with pipelined confirms (app/engine/speed/amqp_async.py), and the
  task metas of concurrent dispatches written to Redis in one round trip (`MetaWriter`);
- `dispatch` (CLI, tasks, sync callers, eager mode, and the API when ENGINE_SPEED_PATCHES is off): Celery's
  `apply_async` with `confirm_publish`, a returned message raising `Unroutable` (app/engine/guarantees/returns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
from amqp.exceptions import AMQPError
from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import KombuError, OperationalError

from app import idempotency
from app.config import get_settings, redact_url
from app.constants import (
    DISPATCHED_AT_HEADER,
    REQUEST_ID_HEADER,
    REVOKED_KEY,
    TASK_EXCHANGE,
    TASK_META_KEY,
    TIER_MAX_PRIORITY,
    TRIGGERED_BY_HEADER,
    Tier,
)
from app.context import request_id
from app.engine import install
from app.engine.celery_app import celery_app
from app.engine.policy import POLICIES, default_priority
from app.engine.speed.amqp_async import AsyncPublisher, PublishFailed, broker_outage
from app.errors import ServiceUnavailable, Unprocessable
from app.logging import StateChangeLog
from app.metrics import observe_publish
from app.redis_store import async_client, get_redis

logger = logging.getLogger(__name__)

# The API publishes through task objects (so eager mode works), which needs them registered here too.
celery_app.loader.import_default_modules()

_BROKER_DOWN = "The message broker did not confirm the task; nothing was dispatched."
_REDIS_DOWN = "The result store (Redis) is unreachable; nothing was dispatched."

#: Redis refusing dispatches (task metas, idempotency keys), logged when it starts, while it lasts and when it
#: ends: never a line per refused request.
redis_outage = StateChangeLog(logger, "Redis", consequence="dispatches answer 503 until it returns")


@dataclass(frozen=True)
class Dispatched:
    """What a dispatching endpoint answers with 202."""

    task_id: str
    status_url: str

    def as_dict(self) -> dict[str, str]:
        """JSON body of the 202."""
        return {"task_id": self.task_id, "status_url": self.status_url}


@dataclass(frozen=True)
class _Planned:
    """A validated dispatch: where it goes and what the publisher records about it."""

    name: str
    task_id: str
    tier: Tier
    priority: int
    kwargs: dict[str, Any]
    options: dict[str, Any]
    meta: dict[str, str]

    @property
    def meta_key(self) -> str:
        return TASK_META_KEY.format(task_id=self.task_id)

    @property
    def headers(self) -> dict[str, str]:
        """Message headers Courier adds to Celery's (a worker reads each as `task.request.<header>`)."""
        headers = {TRIGGERED_BY_HEADER: self.meta["triggered_by"], DISPATCHED_AT_HEADER: self.meta["dispatched_at"]}
        if self.meta["request_id"]:
            headers[REQUEST_ID_HEADER] = self.meta["request_id"]
        return headers


def _plan(
    name: str,
    kwargs: dict[str, Any],
    triggered_by: str | None,
    tier: Tier | None,
    priority: int | None,
    options: dict[str, Any] | None,
) -> _Planned:
    declared = POLICIES[name]
    tier = tier or declared.tier
    if priority is None:
        priority = declared.priority if declared.priority is not None else default_priority(tier)
    if not 0 <= priority <= TIER_MAX_PRIORITY[tier]:
        raise Unprocessable(f"priority must be between 0 and {TIER_MAX_PRIORITY[tier]} on tier {tier.value}.")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    _check_time_limits(name, options)
    task_id = str(uuid.uuid4())
    # The meta is written before the publish so the recorder can attribute the run as soon as it starts.
    meta = {
        "name": name,
        "tier": tier.value,
        "triggered_by": triggered_by or "",
        "dispatched_at": repr(time.time()),
        # The HTTP request that dispatched it (also a message header, which the task's log lines read).
        "request_id": request_id.get() or "",
    }
    return _Planned(name, task_id, tier, priority, kwargs, options, meta)


def _check_time_limits(name: str, options: dict[str, Any]) -> None:
    """Refuse a call whose time limits would not be enforced as given: the hard one must exceed the soft one.

    A call's limit replaces only its own kind; the other is the task's. Celery's prefork pool arms a task's hard
    timer only once its soft one has fired, so a hard limit at or under the soft one (`time_limit` 2 against the
    task's soft 120, or `soft_time_limit` 3600 against its hard 150) let the task run on to the soft limit:
    a probe asked to stop after 2 s ran 8 s and succeeded. Settings refuse the same for the global defaults.
    """
    if "time_limit" not in options and "soft_time_limit" not in options:
        return
    policy = POLICIES[name].resolve(get_settings())
    soft = options.get("soft_time_limit", policy.soft_time_limit_s)
    hard = options.get("time_limit", policy.time_limit_s)
    if hard <= soft:
        raise Unprocessable(
            f"The hard time limit ({hard:g} s) must exceed the soft one ({soft:g} s); a limit not given is the "
            f"task's own ({name}: soft {policy.soft_time_limit_s:g} s, hard {policy.time_limit_s:g} s).",
            details={"soft_time_limit_s": soft, "time_limit_s": hard},
        )


def dispatch(
    name: str,
    *,
    kwargs: dict[str, Any],
    triggered_by: str | None,
    tier: Tier | None = None,
    priority: int | None = None,
    options: dict[str, Any] | None = None,
) -> Dispatched:
    """Publish task `name` through Celery and wait for the broker's confirm; `options` are Celery call options
    (time limits, expires) that override the task's for this call.

    Raises:
        ServiceUnavailable: the broker or Redis is unreachable, or the broker refused the message; nothing ran.
        Unprocessable: the priority is outside the tier's range.
    """
    settings = get_settings()
    plan = _plan(name, kwargs, triggered_by, tier, priority, options)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(plan.meta_key, mapping=plan.meta)  # type: ignore[arg-type]  # redis-py wants a wider key type
        pipe.expire(plan.meta_key, settings.result_expires_s)
        pipe.execute()
    except redis.RedisError as exc:
        redis_outage.failed(repr(exc))
        raise ServiceUnavailable(_REDIS_DOWN) from exc
    redis_outage.succeeded()
    started = time.perf_counter()
    try:
        celery_app.tasks[name].apply_async(
            kwargs=kwargs,
            headers=plan.headers,
            timestamp=int(time.time()),  # py-amqp's property is an integer of seconds
            task_id=plan.task_id,
            queue=plan.tier.value,
            exchange=TASK_EXCHANGE,
            routing_key=plan.tier.value,
            priority=plan.priority,
            confirm_timeout=settings.publish_timeout_s,
            **plan.options,
        )
    except (OperationalError, KombuError, AMQPError, OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):  # no confirm in time: the message may still be queued (see _withdraw)
            _withdraw_sync(plan.task_id)
        with contextlib.suppress(redis.RedisError):  # (expires anyway; the caller must hear the broker's 503)
            get_redis().delete(plan.meta_key)
        broker_outage.failed(f"publishing {name} ({plan.task_id}) failed: {redact_url(repr(exc))}")
        raise ServiceUnavailable(_BROKER_DOWN) from exc
    observe_publish(plan.tier.value, time.perf_counter() - started)
    broker_outage.succeeded()
    return Dispatched(task_id=plan.task_id, status_url=settings.status_url(plan.task_id))


@lru_cache
def _publisher() -> AsyncPublisher:
    return AsyncPublisher(get_settings(), celery_app.amqp)


@lru_cache
def _async_redis() -> aioredis.Redis:
    # A blocking pool: under a burst, requests wait briefly for a connection instead of failing. A command that
    # meets a dead pooled connection (Redis restarted) is retried on a fresh one (app/redis_store.py).
    # Through Sentinel, the primary the Sentinels name (app/redis_store.py).
    return async_client(get_settings().redis_dsn, max_connections=get_settings().publish_pool_size)


class MetaWriter:
    """Writes the task metas of concurrent dispatches to Redis in one pipeline per turn of the event loop.

    Each dispatch still waits until its own meta is written (or gets the batch's error) before it publishes;
    the batch only shares the round trip, which was a large share of the publisher's CPU per dispatch when each
    meta was written alone.
    """

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._pending: list[tuple[str, dict[str, str], asyncio.Future[None]]] = []
        self._writes: set[asyncio.Task[None]] = set()
        # A write that failed after the client's retries: logged when Redis goes away and comes back, not per 503.
        self._outage = redis_outage

    async def write(self, key: str, meta: dict[str, str]) -> None:
        """Store `meta` under `key` (with the results' TTL); raises redis.RedisError when Redis refused it."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            # After the callbacks already due in this turn: the dispatches they start join this batch.
            loop.call_soon(self._flush)
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((key, meta, done))
        await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._write(batch))
        self._writes.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[tuple[str, dict[str, str], asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, meta, _ in batch:
                    pipe.hset(key, mapping=meta)  # type: ignore[arg-type]  # redis-py wants a wider key type
                    pipe.expire(key, self.ttl_s)
                await pipe.execute()
            self._outage.succeeded()
        except (redis.RedisError, OSError) as exc:
            error = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
            self._outage.failed(error)
        except BaseException as exc:  # cancelled on shutdown: the waiting dispatches must not hang
            error = redis.ConnectionError(f"the meta write was interrupted: {exc!r}")
            raise
        finally:
            for _, _, done in batch:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)


@lru_cache
def _meta_writer() -> MetaWriter:
    return MetaWriter(_async_redis(), get_settings().result_expires_s)


async def dispatch_async(
    name: str,
    *,
    kwargs: dict[str, Any],
    triggered_by: str | None,
    tier: Tier | None = None,
    priority: int | None = None,
    options: dict[str, Any] | None = None,
) -> Dispatched:
    """`dispatch` for the event loop: pipelined confirms, no thread per request. Eager mode, and the stock engine
    (ENGINE_SPEED_PATCHES off), take `dispatch` in a thread."""
    settings = get_settings()
    if settings.celery_task_always_eager or not settings.engine_speed_patches:
        return await run_in_threadpool(
            dispatch, name, kwargs=kwargs, triggered_by=triggered_by, tier=tier, priority=priority, options=options
        )
    plan = _plan(name, kwargs, triggered_by, tier, priority, options)
    try:
        await _meta_writer().write(plan.meta_key, dict(plan.meta))
    except redis.RedisError as exc:
        raise ServiceUnavailable(_REDIS_DOWN) from exc
    started = time.perf_counter()
    try:
        await _publisher().publish(
            name=name,
            task_id=plan.task_id,
            kwargs=kwargs,
            routing_key=plan.tier.value,
            priority=plan.priority,
            options=plan.options,
            headers=plan.headers,
        )
    except PublishFailed as exc:
        if exc.maybe_sent:
            await _withdraw(plan.task_id)
        with contextlib.suppress(redis.RedisError):  # (expires anyway; the caller must hear the broker's 503)
            await _async_redis().delete(plan.meta_key)
        broker_outage.failed(f"publishing {name} ({plan.task_id}) failed: {exc}")
        raise ServiceUnavailable(_BROKER_DOWN) from exc
    observe_publish(plan.tier.value, time.perf_counter() - started)
    broker_outage.succeeded()
    return Dispatched(task_id=plan.task_id, status_url=settings.status_url(plan.task_id))


_WITHDRAW_FAILED = "Could not revoke %s after its unconfirmed publish; if the broker queued it, it will run: %r"


async def _withdraw(task_id: str) -> None:
    """Revoke a task whose publish failed after it may have reached the broker, before the caller hears 503.

    The caller is told nothing was dispatched, and retries (a new task id, even with the same Idempotency-Key). But
    a message written to a connection RabbitMQ had blocked (a memory or disk alarm) is read, queued and confirmed
    when the alarm clears, and one whose confirm was lost with its connection may be queued already: both would run
    beside the retry. Revoked, such a message is discarded by the worker's start check if it ever arrives (logged,
    its result stored as REVOKED). A Redis key only: the SQL record of an admin's revoke is not needed for an id
    no client holds, and the key outlives any alarm (REVOCATION_TTL_S).
    """
    try:
        await _async_redis().set(REVOKED_KEY.format(task_id=task_id), "1", ex=get_settings().revocation_ttl_s)
    except redis.RedisError as exc:
        logger.warning(_WITHDRAW_FAILED, task_id, exc)


def _withdraw_sync(task_id: str) -> None:
    """`_withdraw` for the sync path."""
    try:
        get_redis().set(REVOKED_KEY.format(task_id=task_id), "1", ex=get_settings().revocation_ttl_s)
    except redis.RedisError as exc:
        logger.warning(_WITHDRAW_FAILED, task_id, exc)


async def warm_up() -> None:
    """Log the engine's mode, and open the publishing connection and a Redis connection now (API start-up), so the
    first requests do not wait for them. Raises PublishFailed or redis.RedisError when one is down; requests retry
    on their own."""
    settings = get_settings()
    logger.info("%s.", install.select(settings).describe())
    if settings.engine_speed_patches:
        await _publisher().connect()
    await _async_redis().ping()


async def close() -> None:
    """Release the API's publishing connection and Redis pool (on shutdown)."""
    if _publisher.cache_info().currsize:
        await _publisher().close()
    if _async_redis.cache_info().currsize:
        await _async_redis().aclose()
    _publisher.cache_clear()
    _meta_writer.cache_clear()
    _async_redis.cache_clear()


async def dispatch_once(
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
    """`dispatch_async`, honouring an Idempotency-Key: a repeat of the same request returns the first answer."""

    async def publish() -> dict[str, Any]:
        dispatched = await dispatch_async(
            name, kwargs=kwargs, triggered_by=triggered_by, tier=tier, priority=priority, options=options
        )
        return dispatched.as_dict()

    def redis_down(exc: redis.RedisError) -> Exception:
        redis_outage.failed(repr(exc))
        return ServiceUnavailable(_REDIS_DOWN)

    answer = await idempotency.once(
        owner=triggered_by,
        key=idempotency_key,
        route=name,
        body=request_body,
        action=publish,
        unreachable=redis_down,
    )
    return Dispatched(**answer)
