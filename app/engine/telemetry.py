"""Worker telemetry: task counters and durations in Prometheus multiprocess files, and JSON logging.

Every worker writes its metrics to `<METRICS_DIR>/worker-<hostname>/`, wiped when it starts; its prefork
children each add a file there (prometheus-client multiprocess mode), so a task costs a few memory-mapped
writes and no network round trip. The API's `GET /metrics` merges every worker directory on the host, and
`WORKER_METRICS_PORT` makes each worker serve its own directory too (one worker per container).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, signals
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from app.config import get_settings
from app.logging import configure_logging
from app.metrics import enable_multiprocess

logger = logging.getLogger(__name__)

#: Buckets of the task duration histogram, in seconds (probes take milliseconds, bulk work minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
#: Prefix of each worker's metrics directory inside METRICS_DIR.
WORKER_DIR_PREFIX = "worker-"


def worker_dir(hostname: str) -> Path:
    """The metrics directory of one worker."""
    return get_settings().metrics_path / (WORKER_DIR_PREFIX + re.sub(r"[^A-Za-z0-9_.@-]", "_", hostname))


@dataclass(frozen=True)
class TaskMetrics:
    """The metrics a worker records about the tasks it runs."""

    tasks: Counter
    duration: Histogram
    errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> TaskMetrics:
        return cls(
            tasks=Counter(
                "celery_tasks",
                "Tasks that finished an attempt, by name, queue and state (SUCCESS, FAILURE, RETRY, IGNORED).",
                ["name", "queue", "state"],
                registry=registry,
            ),
            duration=Histogram(
                "celery_task_duration_seconds",
                "Run time of one attempt, by task name and queue.",
                ["name", "queue"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            errors=Counter(
                "celery_task_errors",
                "Attempts that raised, by task name, queue and exception class.",
                ["name", "queue", "error"],
                registry=registry,
            ),
        )


#: Set in the worker when it boots; None elsewhere (the hooks are then no-ops).
_metrics: TaskMetrics | None = None
#: perf_counter() at the start of each running task, by task id (per pool process).
_started: dict[str, float] = {}


def _queue_of(task: Any) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    return str(delivery.get("routing_key") or delivery.get("queue") or "")


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """`celeryd_init`: before the pool forks, wipe and select this worker's metrics directory."""
    global _metrics
    enable_multiprocess(worker_dir(str(sender)), wipe=True)
    _metrics = TaskMetrics.create(registry=None)


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """`worker_ready`: serve this worker's metrics on WORKER_METRICS_PORT when one is set."""
    port = get_settings().worker_metrics_port
    if not port or sender is None:
        return
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    logger.info("Worker metrics served on :%d/metrics.", port)


def on_task_prerun(task_id: str | None = None, **_: Any) -> None:
    if _metrics is not None and task_id:
        _started[task_id] = time.perf_counter()


def on_task_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    """Count the attempt by its state and observe its duration; a failing hook only logs."""
    if _metrics is None or task is None:
        return
    try:
        started = _started.pop(task_id or "", None)
        queue = _queue_of(task)
        _metrics.tasks.labels(task.name, queue, state or "UNKNOWN").inc()
        if started is not None:
            _metrics.duration.labels(task.name, queue).observe(time.perf_counter() - started)
    except Exception:
        logger.warning("Could not record the metrics of task %s.", task_id, exc_info=True)


def on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """Count the error by exception class (retries are counted by `task_retry`)."""
    if _metrics is None or sender is None:
        return
    try:
        _metrics.errors.labels(sender.name, _queue_of(sender), type(exception).__name__).inc()
    except Exception:
        logger.warning("Could not record the error of task %s.", task_id, exc_info=True)


def on_task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    """A transient error that will be retried is an error too."""
    if _metrics is None or sender is None:
        return
    try:
        error = type(reason).__name__ if isinstance(reason, BaseException) else "Retry"
        _metrics.errors.labels(sender.name, _queue_of(sender), error).inc()
    except Exception:
        logger.warning("Could not record a retry.", exc_info=True)


def on_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """`setup_logging`: the worker logs JSON lines (LOG_FORMAT) instead of Celery's own format."""
    level = loglevel if isinstance(loglevel, str) else logging.getLevelName(loglevel or logging.INFO)
    configure_logging(str(level))


def install(app: Celery) -> None:
    """Connect the telemetry hooks (called once from celery_app)."""
    del app  # signals are process-wide; the argument documents which app they serve
    signals.celeryd_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.task_failure.connect(on_task_failure, weak=False)
    signals.task_retry.connect(on_task_retry, weak=False)
