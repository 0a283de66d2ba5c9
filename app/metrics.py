"""Prometheus metric definitions the publishers record into: the API's request and publish-confirm metrics, kept
in multiprocess files under `<METRICS_DIR>/api/` so every uvicorn worker process adds to the same numbers.

`GET /metrics` (app/api/metrics.py) merges these with the workers' task metrics (app/engine/telemetry.py) and
gauges read from the stores at scrape time.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

from prometheus_client import Counter, Histogram, values

from app.config import get_settings

#: Latency buckets of API requests and publish confirms, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))


def enable_multiprocess(directory: Path, *, wipe: bool) -> None:
    """Point prometheus-client at `directory` for every metric created from now on (and in forked children)."""
    if wipe and directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # The value class is chosen when prometheus_client is imported; choose again now that the directory is set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class ApiMetrics:
    """Request rate, latency and status of the API, and the broker's publish-confirm latency."""

    def __init__(self) -> None:
        self.requests = Counter(
            "courier_api_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=None,
        )
        self.latency = Histogram(
            "courier_api_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.publish_confirm = Histogram(
            "courier_publish_confirm_seconds",
            "Time from publishing a task to RabbitMQ's confirm, by tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )


@lru_cache
def api_metrics() -> ApiMetrics:
    """The API's metrics, in this host's `<METRICS_DIR>/api/` multiprocess files (created on first use).

    A process already in multiprocess mode (a worker that publishes) keeps its own directory.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        enable_multiprocess(get_settings().metrics_path / "api", wipe=False)
    return ApiMetrics()


def observe_publish(tier: str, seconds: float) -> None:
    """Record one publish-confirm round trip (called by the publishers)."""
    api_metrics().publish_confirm.labels(tier).observe(seconds)
