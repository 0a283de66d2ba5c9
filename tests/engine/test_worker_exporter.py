"""A worker's own exporter (WORKER_METRICS_PORT), as each worker container serves it in production.

Its own module: the shared worker of test_metrics.py would take some of these probes.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import dispatch, finished, value
from tests.support.processes import free_port
from tests.support.session import join


def test_a_worker_serves_its_own_metrics_on_its_port_when_one_is_set(api, start_worker, admin_key, empty_queues):
    # Given a worker with its own exporter (as in production, one worker per container)
    port = free_port()
    start_worker("low", env={"WORKER_METRICS_PORT": str(port)})
    # When it runs two probes
    for task_id in [dispatch(api, admin_key, tier="low"), dispatch(api, admin_key, tier="low")]:
        join(lambda t=task_id: finished(api, admin_key, t), what=f"task {task_id} to finish")

    # Then its own /metrics counts exactly those two (its directory was wiped when it started)
    def served() -> bool:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return value(samples, "celery_tasks_total", name="system.ping", queue="low", state="SUCCESS") == 2

    join(served, timeout=20, what="the worker's exporter to count both probes")
