"""Prometheus metrics read at scrape time from the durable stores, so every API process reports the same."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.config import get_settings
from app.db import session_scope, utcnow
from app.deadletters import service as deadletters

logger = logging.getLogger(__name__)


class DeadLetterCollector(Collector):
    """Dead letters by task and reason, the oldest pending one's age, and queue depths (dead_letter included)."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
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
        try:
            with session_scope() as session:
                for task, reason, count in deadletters.recorded_counts(session=session):
                    recorded.add_metric([task, reason], count)
                for task, reason, count in deadletters.pending_counts(session=session):
                    pending.add_metric([task, reason], count)
                first = deadletters.oldest_pending_at(session=session)
            oldest.add_metric([], (utcnow() - first).total_seconds() if first else 0.0)
        except Exception:  # a scrape must not fail because one source is down
            logger.warning("Could not read dead-letter metrics from SQL.", exc_info=True)
        yield from (recorded, pending, oldest)
        depth = GaugeMetricFamily(
            "courier_queue_messages", "Messages in each Courier queue, by state.", labels=["queue", "state"]
        )
        try:
            from app.tasks import control

            for queue in control.queues(get_settings()):
                depth.add_metric([queue.name, "ready"], queue.ready)
                depth.add_metric([queue.name, "unacked"], queue.unacked)
        except Exception:
            logger.warning("Could not read queue depths for metrics.", exc_info=True)
        yield depth


def build_registry() -> CollectorRegistry:
    """A registry with Courier's collectors (the default process metrics are left out: one registry per app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeadLetterCollector())
    return registry
