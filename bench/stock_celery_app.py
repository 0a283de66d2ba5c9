"""An out-of-the-box Celery app with a no-op task: the benchmark's 'stock Celery' peer.

Nothing is tuned: early ack, prefetch 4 per process, no publisher confirms, no result backend.
`celery -A bench.stock_celery_app worker` finds `app` (broker from BENCH_BROKER_URL).
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(broker_url: str) -> Celery:
    """A stock Celery app on `broker_url` with `bench.noop` registered."""
    celery = Celery("stock", broker=broker_url, set_as_current=False)

    @celery.task(name="bench.noop", shared=False)
    def noop() -> None:
        """Do nothing."""

    return celery


app = make_app(os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
