"""Dramatiq on RabbitMQ with publisher confirms and its Redis results middleware: the benchmark's Dramatiq peer.

`dramatiq bench.dramatiq_app` imports this with BENCH_BROKER_URL and BENCH_RESULT_URL set.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend


def make(url: str, result_url: str) -> tuple[RabbitmqBroker, Any]:
    """A RabbitMQ broker with confirms and Redis results, set as Dramatiq's global one, and its no-op actor."""
    broker = RabbitmqBroker(url=url, confirm_delivery=True)
    broker.add_middleware(Results(backend=RedisBackend(url=result_url)))
    dramatiq.set_broker(broker)

    def noop() -> dict[str, Any]:
        """Answer a small result, like Courier's probe (system.ping)."""
        return {"pong": True, "started_at": time.time()}

    return broker, dramatiq.actor(broker=broker, actor_name="noop", max_retries=0, store_results=True)(noop)


if "BENCH_BROKER_URL" in os.environ:
    broker, noop = make(os.environ["BENCH_BROKER_URL"], os.environ["BENCH_RESULT_URL"])
