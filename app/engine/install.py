"""The engine's registration: which class Celery, kombu and py-amqp run for each override, chosen in one place.

Every override is selected here by import. Where Celery or kombu take only a "module:Class" string, the string is
built from the class object (`reference`), so the import graph and an IDE lead to the class. ENGINE_SPEED_PATCHES
(Settings.engine_speed_patches) chooses between the two columns; the correctness overrides (app/engine/guarantees/)
run in both. app/engine/README.md lists the upstream names each override relies on (app/engine/contract.py).

| Celery / kombu loads               | speed patches on                 | off: stock machinery, guarantees kept      |
|------------------------------------|----------------------------------|--------------------------------------------|
| the transport (`broker_transport`) | speed.amqp_transport.Transport   | guarantees.returns.Transport (kombu's      |
|                                    |                                  | pyamqp, a returned publish raising)        |
| the pool (`worker_pool`)           | speed.pool.PreforkPool, SoloPool | Celery's prefork, solo                     |
| the result backend                 | speed.results.BatchingRedisBackend | guarantees.results.CourierRedisBackend   |
| the same through Redis Sentinel    | speed.results.                   | guarantees.results.                        |
|                                    | BatchingSentinelBackend          | CourierSentinelBackend                     |
| the consumer (`worker_consumer`)   | speed.consumer.FastConsumer      | guarantees.consumer.CourierConsumer        |
| the tracer's `saferepr`            | speed.tracing.bounded_repr       | Celery's saferepr                          |
| the API's `dispatch_async`         | speed.amqp_async (aiormq)        | Celery's apply_async, in a thread          |
| the task sender (`Celery(amqp=)`)  | guarantees.sending.CourierAMQP   | the same                                   |
| the request (`CourierTask.Request`, set in app/engine/task.py) | guarantees.request.CourierRequest | the same |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kombu.connection
import kombu.transport
from celery import Celery, signals

from app.config import Settings
from app.engine.guarantees import returns
from app.engine.guarantees.consumer import CourierConsumer
from app.engine.guarantees.results import CourierRedisBackend, CourierSentinelBackend
from app.engine.guarantees.sending import CourierAMQP
from app.engine.speed import amqp_transport, pool, tracing
from app.engine.speed.consumer import FastConsumer
from app.engine.speed.results import BatchingRedisBackend, BatchingSentinelBackend

logger = logging.getLogger(__name__)

#: kombu transport aliases (`broker_transport`) → Courier's transports. kombu shows their connections' URLs as
#: amqp:// (the worker's banner, Flower's broker page, which parses the scheme), as it does for its own `pyamqp`.
TRANSPORTS: dict[str, type[returns.Transport]] = {
    amqp_transport.ALIAS: amqp_transport.Transport,
    "courier-pyamqp": returns.Transport,
}


def reference(cls: type[Any]) -> str:
    """Celery's and kombu's "module:Class" name of `cls`."""
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass(frozen=True)
class Engine:
    """The classes one process runs: the speed layer's, or stock machinery with the correctness overrides."""

    speed_patches: bool
    transport: type[returns.Transport]
    consumer: type[CourierConsumer]
    #: Courier's batching pool; None: Celery's own pool of the same kind (CELERY_WORKER_POOL).
    pool: type[Any] | None
    backend: type[CourierRedisBackend]
    #: The same backend on the primary Redis Sentinel names (a `sentinel://` result backend).
    sentinel_backend: type[CourierRedisBackend]
    amqp: type[CourierAMQP] = CourierAMQP

    @property
    def mode(self) -> str:
        return "speed patches on" if self.speed_patches else "speed patches off (stock Celery/kombu/py-amqp)"

    @property
    def transport_alias(self) -> str:
        return next(alias for alias, cls in TRANSPORTS.items() if cls is self.transport)

    def result_backend(self, url: str) -> str:
        """The `result_backend` setting for `url`: redis:// and rediss:// go to this engine's backend class,
        sentinel:// to its Sentinel variant."""
        if url.startswith("sentinel://"):
            return f"{reference(self.sentinel_backend)}+{url}"
        if url.startswith(("redis://", "rediss://")):
            return f"{reference(self.backend)}+{url}"
        return url

    def worker_pool(self, kind: str) -> str:
        """The `worker_pool` setting for CELERY_WORKER_POOL `kind` (prefork or solo)."""
        return reference(self.pool) if self.pool is not None else kind

    def describe(self) -> str:
        pool_name = self.pool.__qualname__ if self.pool is not None else "Celery's own"
        return (
            f"Courier engine: {self.mode}; transport {self.transport_alias}, pool {pool_name}, "
            f"result backend {self.backend.__qualname__}, consumer {self.consumer.__qualname__}"
        )


def select(settings: Settings) -> Engine:
    """The engine ENGINE_SPEED_PATCHES asks for."""
    if settings.engine_speed_patches:
        return Engine(
            speed_patches=True,
            transport=amqp_transport.Transport,
            consumer=FastConsumer,
            pool=pool.POOLS[settings.celery_worker_pool],
            backend=BatchingRedisBackend,
            sentinel_backend=BatchingSentinelBackend,
        )
    return Engine(
        speed_patches=False,
        transport=returns.Transport,
        consumer=CourierConsumer,
        pool=None,
        backend=CourierRedisBackend,
        sentinel_backend=CourierSentinelBackend,
    )


def register_transports() -> None:
    """Make kombu resolve Courier's transport aliases (`broker_transport`), shown as amqp:// like `pyamqp`."""
    for alias, transport in TRANSPORTS.items():
        kombu.transport.TRANSPORT_ALIASES[alias] = reference(transport)
        kombu.connection.resolve_aliases[alias] = "amqp"


def celery_options(engine: Engine, settings: Settings) -> dict[str, Any]:
    """The Celery settings that select `engine`'s classes (app/engine/celery_app.py adds the rest)."""
    return {
        "broker_transport": engine.transport_alias,
        "result_backend": engine.result_backend(settings.result_backend_dsn),
        "worker_pool": engine.worker_pool(settings.celery_worker_pool),
        "worker_consumer": reference(engine.consumer),
    }


def install(app: Celery, engine: Engine) -> None:
    """Hook `engine` into the worker's start: the tracer's repr (before the pool forks) and the log of its mode."""

    if engine.speed_patches:  # before the pool forks, so the children inherit it
        signals.worker_init.connect(lambda **_: tracing.install(), weak=False)
    # once the worker's logging is set up
    signals.celeryd_after_setup.connect(lambda **_: logger.info("%s.", engine.describe()), weak=False)
