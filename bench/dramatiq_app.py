"""Dramatiq on RabbitMQ with a no-op actor: the benchmark's Dramatiq peer.

`dramatiq bench.dramatiq_app` imports this with BENCH_BROKER_URL and BENCH_CONFIRM set.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker


def make(url: str, confirm: bool) -> tuple[RabbitmqBroker, Any]:
    """A RabbitMQ broker (confirms on or off) set as Dramatiq's global one, and its no-op actor."""
    broker = RabbitmqBroker(url=url, confirm_delivery=confirm)
    dramatiq.set_broker(broker)

    def noop() -> None:
        """Do nothing."""

    return broker, dramatiq.actor(noop, broker=broker, actor_name="noop", max_retries=0)


if "BENCH_BROKER_URL" in os.environ:
    broker, noop = make(os.environ["BENCH_BROKER_URL"], os.environ.get("BENCH_CONFIRM") == "1")
