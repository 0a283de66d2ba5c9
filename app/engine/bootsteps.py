"""Worker boot steps: refuse to start on a broken topology, restore revocations, write a heartbeat."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from celery import Celery, bootsteps, signals

from app import db, redis_store
from app.config import get_settings
from app.constants import WORKER_HEARTBEAT_KEY, WORKER_REGISTRY_KEY
from app.db import session_scope
from app.engine import topology
from app.engine.guarantees import outages
from app.engine.pauses import SkipPausedQueues
from app.logging import StateChangeLog
from app.redis_store import get_redis
from app.runs import revocations

logger = logging.getLogger(__name__)

#: Exit status of a worker refused for configuration reasons (sysexits EX_CONFIG).
EX_CONFIG = 78


class TopologyCheck(bootsteps.StartStopStep):  # type: ignore[misc]
    """Before consuming, check that the work queues dead-letter into a bound, bounded dead-letter queue.

    A worker without that wiring would turn every rejected message into a silent drop, so it exits instead.
    """

    label = "Courier topology check"

    def start(self, worker: Any) -> None:
        settings = get_settings()
        if settings.celery_task_always_eager:
            return
        problems = topology.verify(settings)
        if problems:
            logger.critical(
                "Refusing to start: the dead-letter wiring on vhost %r is incomplete:\n  - %s\n"
                "Run `python -m app.cli topology declare` (or ./scripts/start_tasks.sh start) and start again.",
                settings.broker_vhost,
                "\n  - ".join(problems),
            )
            raise SystemExit(EX_CONFIG)
        try:  # a Redis that persists nothing: refused in production, a loud warning elsewhere (README)
            redis_store.check_persistence_at_start(settings, process="worker")
        except redis_store.PersistenceRefused as exc:
            logger.critical("%s", exc)
            raise SystemExit(EX_CONFIG) from exc
        try:
            with session_scope() as session:
                restored = revocations.restore_to_redis(session=session)
            logger.info("Restored %d revocation(s) from SQL into Redis.", restored)
        except Exception:  # a hook failure must not kill the worker; Redis still holds recent revocations
            logger.exception("Could not restore revocations from SQL; continuing with what Redis holds.")


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Write `courier:worker:<hostname>` every interval with TTL 3 × interval, and the hostname into the registry
    `courier:workers`; both taken back on clean shutdown."""

    label = "Courier heartbeat"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Its own outage log: the task path's (outages.redis_outage) says what an outage does to tasks.
        self.outage = StateChangeLog(
            logger, "Redis, for the heartbeat,", consequence="this worker shows as missing until it is back"
        )

    def start(self, worker: Any) -> None:
        settings = get_settings()
        interval = settings.worker_heartbeat_interval_s
        key = WORKER_HEARTBEAT_KEY.format(hostname=worker.hostname)
        started = time.time()

        def beat() -> None:
            while True:
                queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
                status = {
                    "hostname": worker.hostname,
                    "pid": os.getpid(),
                    "queues": queues,
                    "concurrency": worker.concurrency,
                    "pool": _pool_kind(worker.pool),
                    "engine": _engine_classes(worker),
                    "started_at": started,
                    "ts": time.time(),
                }
                try:
                    ttl = max(1, int(interval * 3))
                    pipe = get_redis().pipeline(transaction=False)
                    pipe.set(key, json.dumps(status), ex=ttl)
                    pipe.sadd(WORKER_REGISTRY_KEY, worker.hostname)
                    pipe.expire(WORKER_REGISTRY_KEY, ttl)
                    pipe.execute()
                    # Redis answers: the end of an outage the worker met on its tasks' path is logged here too
                    # (on Celery's own pools, with ENGINE_SPEED_PATCHES=off, nothing else in this process hears).
                    outages.redis_outage.succeeded()
                    self.outage.succeeded()
                except outages.OUTAGE_ERRORS as exc:  # an outage: a line when it starts, then one a while, not a
                    # warning with a traceback every beat (every 5 s per worker)
                    self.outage.failed(repr(exc))
                except Exception:
                    logger.warning("Could not write the heartbeat of %s.", worker.hostname, exc_info=True)
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=beat, name="courier-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.delete(WORKER_HEARTBEAT_KEY.format(hostname=worker.hostname))
            pipe.srem(WORKER_REGISTRY_KEY, worker.hostname)
            pipe.execute()
        except outages.OUTAGE_ERRORS as exc:  # (it expires on its own)
            logger.warning("Could not clear the heartbeat of %s: Redis is unreachable (%r).", worker.hostname, exc)
        except Exception:
            logger.warning("Could not clear the heartbeat of %s.", worker.hostname, exc_info=True)


def _pool_kind(pool: Any) -> str | None:
    """`prefork` or `solo` for Courier's pools (app/engine/speed/pool.py), else the module of Celery's pool."""
    if pool is None:
        return None
    return str(getattr(pool, "kind", None) or type(pool).__module__.rsplit(".", 1)[-1])


def _engine_classes(worker: Any) -> dict[str, str | None]:
    """The classes this worker runs (app/engine/install.py chose them): its pool, result backend, consumer, and
    the transport of the consumer's connection (None until the consumer has connected)."""
    consumer = getattr(worker, "consumer", None)
    connection = getattr(consumer, "connection", None)
    return {
        "pool": _qualified(worker.pool),
        "backend": _qualified(worker.app.backend),
        "consumer": _qualified(consumer),
        "transport": _qualified(connection.transport) if connection is not None else None,
    }


def _qualified(thing: Any) -> str | None:
    return None if thing is None else f"{type(thing).__module__}.{type(thing).__qualname__}"


def install(app: Celery) -> None:
    """Add Courier's boot steps to the worker blueprint (they start before the consumer, which is last)."""
    app.steps["worker"].add(TopologyCheck)
    signals.worker_process_init.connect(db.forget_inherited_pool, weak=False)
    app.steps["worker"].add(Heartbeat)
    app.steps["worker"].add(SkipPausedQueues)  # paused tiers stay paused
