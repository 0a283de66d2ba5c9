"""Listing the workers (health, /metrics, the console) costs the same however many keys Redis holds."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.api import ApiProcess
from tests.support.processes import OwnRedis
from tests.support.session import join

HEALTH = "/api/v1/tasks/health"


def _scans(server: OwnRedis) -> int:
    return int(server.client().info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_health_and_metrics_find_the_workers_without_scanning_every_key_of_redis(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess], start_worker
):
    """The workers were found by a SCAN for their heartbeat keys, which walks every key in Redis: at a steady rate
    a day of results, task metas and start counters (millions of keys), on every health check, /metrics scrape
    and console refresh. They are read from a registry now: no SCAN at all."""
    # Given a worker and an API on a Redis of the test's own that holds 30,000 other keys, as results do
    server = own_redis()
    env = {"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": ""}
    client = server.client()
    for start in range(0, 30_000, 5_000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, start + 5_000):
            pipe.set(f"celery-task-meta-{n:08d}", "{}", ex=3600)
        pipe.execute()
    worker = start_worker(env=env, wait=False)
    join(lambda: "ready." in worker.log() and client.exists(f"courier:worker:{worker.hostname}"),
         timeout=60, what="the worker to be ready")  # fmt: skip
    api = api_process(env)
    join(lambda: httpx.get(f"{api.base}{HEALTH}", timeout=30).status_code == 200, timeout=30, what="health 200")
    scans = _scans(server)

    # When health and /metrics are read
    health = httpx.get(f"{api.base}{HEALTH}", timeout=30)
    metrics = httpx.get(f"{api.base}/metrics", timeout=30)

    # Then both found the worker, and Redis ran no SCAN for them
    assert health.status_code == 200 and health.json()["components"]["workers"]["status"] == "up"
    assert metrics.status_code == 200 and "\ncelery_workers_count 1.0\n" in metrics.text
    assert _scans(server) == scans

    # When the worker dies without a word (SIGKILL), Then health says the workers are down once its heartbeat
    # expires, and the registry no longer names it
    worker.kill()
    join(lambda: httpx.get(f"{api.base}{HEALTH}", timeout=30).status_code == 503, timeout=30, what="health 503")
    assert worker.hostname not in client.smembers("courier:workers")
