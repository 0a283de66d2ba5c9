"""`GET /metrics` (prometheus-client): what the API serves, and the middleware that counts its requests.

Three sources, merged in one registry:
- the API's own request and publish metrics (app/metrics.py), kept in multiprocess files under
  `<METRICS_DIR>/api/` so every uvicorn worker process adds to the same numbers;
- the workers' task metrics (app/engine/telemetry.py), one directory per worker under METRICS_DIR;
- gauges read at scrape time from the durable stores: queue backlogs and consumers (RabbitMQ management API),
  live workers (heartbeats in Redis), dead letters (SQL), paused tiers (SQL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.constants import DEAD_LETTER_ARCHIVE_QUEUE, DEAD_LETTER_QUEUE, Tier
from app.db import session_scope, utcnow
from app.deadletters import service as deadletters
from app.metrics import api_metrics
from app.operations import service as operations
from app.rabbitmq import ManagementClient

logger = logging.getLogger(__name__)

#: Queues whose backlog is exported: the three tiers and both dead-letter queues.
EXPORTED_QUEUES = (*(t.value for t in Tier), DEAD_LETTER_QUEUE, DEAD_LETTER_ARCHIVE_QUEUE)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its raw path, which would explode the labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = api_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_remember)
        finally:
            route = route_template(scope)
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The matched route as a template (`/api/v1/tasks/task/{task_id}`), or `unmatched` (bounded labels)."""
    if scope.get("route") is None:
        return "unmatched"
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join("{" + values[part] + "}" if part in values else part for part in str(scope["path"]).split("/"))


class MultiprocessFilesCollector(Collector):
    """Every `.db` file under METRICS_DIR (the API's and each worker's directory), merged as one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterator[Metric]:
        files = sorted(str(p) for p in self.root.glob("*/*.db"))
        try:
            yield from MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        except Exception:  # a file half-written by a process being born must not fail the scrape
            logger.warning("Could not merge the multiprocess metric files under %s.", self.root, exc_info=True)


class StoresCollector(Collector):
    """Gauges read at scrape time: queue backlogs, oldest message age, consumers, workers, dead letters."""

    def collect(self) -> Iterator[Metric]:
        yield from self._dead_letters()
        yield from self._queues()
        yield from self._workers()

    def _dead_letters(self) -> Iterator[Metric]:
        recorded = CounterMetricFamily(
            "courier_dead_letters", "Dead letters recorded in SQL, by task and reason.", labels=["task", "reason"]
        )
        pending = GaugeMetricFamily(
            "courier_dead_letters_pending", "Dead letters not yet replayed or discarded.", labels=["task", "reason"]
        )
        oldest = GaugeMetricFamily(
            "courier_dead_letter_oldest_pending_age_seconds",
            "Age of the oldest pending dead letter (0 when there is none).",
        )
        paused = GaugeMetricFamily("courier_queue_paused", "1 while consumption of a tier is paused.", labels=["queue"])
        try:
            with session_scope() as session:
                for task, reason, count in deadletters.recorded_counts(session=session):
                    recorded.add_metric([task, reason], count)
                for task, reason, count in deadletters.pending_counts(session=session):
                    pending.add_metric([task, reason], count)
                first = deadletters.oldest_pending_at(session=session)
                stopped = {p.queue for p in operations.paused(session=session)}
            oldest.add_metric([], (utcnow() - first).total_seconds() if first else 0.0)
            for tier in Tier:
                paused.add_metric([tier.value], 1.0 if tier.value in stopped else 0.0)
        except Exception:  # a scrape must not fail because one source is down
            logger.warning("Could not read dead-letter metrics from SQL.", exc_info=True)
        yield from (recorded, pending, oldest, paused)

    def _queues(self) -> Iterator[Metric]:
        settings = get_settings()
        up = GaugeMetricFamily("courier_broker_up", "1 when the RabbitMQ management API answered this scrape.")
        backlog = GaugeMetricFamily(
            "celery_queues_backlog",
            "Messages in a queue, ready plus unacked (dead letters included).",
            labels=["queue"],
        )
        depth = GaugeMetricFamily(
            "courier_queue_messages", "Messages in each Courier queue, by state.", labels=["queue", "state"]
        )
        consumers = GaugeMetricFamily("courier_queue_consumers", "Consumers attached to a queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "celery_queue_oldest_message_age_seconds",
            "Age of the message at the head of a queue (when its publisher stamped a timestamp; else absent).",
            labels=["queue"],
        )
        try:
            with ManagementClient.for_broker_user(settings) as client:
                live = {q["name"]: q for q in client.queues(settings.broker_vhost)}
            up.add_metric([], 1.0)
        except Exception:
            logger.warning("Could not read queue depths for metrics.", exc_info=True)
            live = None
            up.add_metric([], 0.0)
        if live is not None:
            now = time.time()
            for name in EXPORTED_QUEUES:
                found = live.get(name, {})
                ready = float(found.get("messages_ready") or 0)
                unacked = float(found.get("messages_unacknowledged") or 0)
                backlog.add_metric([name], ready + unacked)
                depth.add_metric([name, "ready"], ready)
                depth.add_metric([name, "unacked"], unacked)
                consumers.add_metric([name], float(found.get("consumers") or 0))
                head = found.get("head_message_timestamp")
                if isinstance(head, int | float) and head > 0:
                    age.add_metric([name], max(0.0, now - float(head)))
        yield from (up, backlog, depth, consumers, age)

    def _workers(self) -> Iterator[Metric]:
        count = GaugeMetricFamily("celery_workers_count", "Workers with a fresh heartbeat.")
        by_tier = GaugeMetricFamily(
            "courier_tier_workers", "Workers with a fresh heartbeat that consume a tier.", labels=["queue"]
        )
        try:
            found = operations.workers()
            count.add_metric([], float(len(found)))
            for tier in Tier:
                by_tier.add_metric([tier.value], float(sum(1 for w in found if tier.value in w.queues)))
        except Exception:
            logger.warning("Could not read worker heartbeats for metrics.", exc_info=True)
        yield from (count, by_tier)


def build_registry() -> CollectorRegistry:
    """A registry with every Courier collector (the default process metrics are left out: one per host)."""
    api_metrics()  # make sure this process writes its files before the first scrape reads them
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MultiprocessFilesCollector(get_settings().metrics_path))
    registry.register(StoresCollector())
    return registry
