"""The benchmark's Celery peers, one no-op task each, in three flavours (BENCH_CELERY_FLAVOUR):

- `stock`: Celery out of the box, no result backend (early ack, prefetch 4 per process, no publisher confirms):
  kept as a reference line;
- `stock_results`: the same plus a Redis result backend, what the docs' first steps give a user;
- `guarantees`: Celery configured by hand with Courier's guarantees, the setup a careful team would write: late
  ack, reject on worker lost, publisher confirms, persistent messages, Redis results, JSON only, the three tier
  queues with priorities on a direct exchange, Courier's concurrency and prefetch.

`celery -A bench.celery_peers worker` finds `app` (broker from BENCH_BROKER_URL, results from BENCH_RESULT_URL).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

#: The flavours, in the order the benchmark measures them.
FLAVOURS = ("stock", "stock_results", "guarantees")
#: Queue each flavour's task goes to.
QUEUE = {"stock": "celery", "stock_results": "celery", "guarantees": "medium"}
#: Courier's defaults (app/config.py): prefork processes per worker and prefetch multiplier.
CONCURRENCY = 4
PREFETCH_MULTIPLIER = 4
#: x-max-priority of each tier queue, as Courier declares them (app/constants.py, TIER_MAX_PRIORITY).
TIER_PRIORITIES = {"high": 10, "medium": 5, "low": 1}


def guarantees_config() -> dict[str, Any]:
    """Celery settings carrying Courier's guarantees, written with public settings only."""
    tasks = Exchange("tasks", type="direct", durable=True)
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_delivery_mode": "persistent",
        "broker_transport_options": {"confirm_publish": True},
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": False,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": PREFETCH_MULTIPLIER,
        "worker_concurrency": CONCURRENCY,
        "task_queues": [
            Queue(tier, tasks, routing_key=tier, durable=True, queue_arguments={"x-max-priority": top})
            for tier, top in TIER_PRIORITIES.items()
        ],
        "task_create_missing_queues": False,
        "task_default_queue": "medium",
        "task_default_exchange": "tasks",
        "task_default_routing_key": "medium",
        "task_default_priority": (TIER_PRIORITIES["medium"] + 1) // 2,
    }


def make_app(flavour: str, broker_url: str, result_url: str | None = None) -> Celery:
    """A Celery app of `flavour` on `broker_url` (results in `result_url`), with `bench.noop` registered."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown Celery flavour {flavour!r}; one of {', '.join(FLAVOURS)}")
    backend = result_url if flavour != "stock" else None
    celery = Celery(f"bench-{flavour}", broker=broker_url, backend=backend, set_as_current=False)
    if flavour == "guarantees":
        celery.conf.update(guarantees_config())

    @celery.task(name="bench.noop", shared=False)
    def noop() -> dict[str, Any]:
        """Answer a small result, like Courier's probe (system.ping)."""
        return {"pong": True, "started_at": time.time()}

    return celery


app = make_app(
    os.environ.get("BENCH_CELERY_FLAVOUR", "stock"),
    os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_RESULT_URL"),
)
