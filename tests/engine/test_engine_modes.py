"""ENGINE_SPEED_PATCHES really switches: a worker started with it on runs the speed layer's transport, pool,
result backend and consumer; one started with it off runs kombu's, Celery's and the correctness overrides only.
The classes are read from the running workers (their heartbeat), not from the configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.services import redis_client
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("empty_queues")

SPEED = {
    "pool": "app.engine.speed.pool.PreforkPool",
    "backend": "app.engine.speed.results.BatchingRedisBackend",
    "consumer": "app.engine.speed.consumer.FastConsumer",
    "transport": "app.engine.speed.amqp_transport.Transport",
}
STOCK = {
    "pool": "celery.concurrency.prefork.TaskPool",
    "backend": "app.engine.guarantees.results.CourierRedisBackend",
    "consumer": "app.engine.guarantees.consumer.CourierConsumer",
    "transport": "app.engine.guarantees.returns.Transport",
}


def _engine_of(worker: Any) -> dict[str, str | None]:
    """The engine classes the worker reports once its consumer has connected."""

    def connected() -> dict[str, str | None] | None:
        raw = redis_client().get(f"courier:worker:{worker.hostname}")
        engine: dict[str, str | None] = json.loads(raw)["engine"] if raw else {}
        return engine if engine.get("transport") else None

    found: dict[str, str | None] = join(connected, what=f"the engine classes of {worker.name}")
    return found


@pytest.mark.parametrize(("setting", "expected"), [("on", SPEED), ("off", STOCK)])
def test_the_worker_runs_the_engine_the_setting_selects_and_logs_its_mode(setting, expected, start_worker):
    # Given a worker started with ENGINE_SPEED_PATCHES set one way
    worker = start_worker("low", concurrency=1, env={"ENGINE_SPEED_PATCHES": setting})
    # Then the classes it runs are that mode's
    assert _engine_of(worker) == expected
    # And its log says which mode runs
    mode = "speed patches on" if setting == "on" else "speed patches off (stock Celery/kombu/py-amqp)"
    assert f"Courier engine: {mode}" in worker.log()


def test_a_task_succeeds_with_its_history_on_the_stock_engine(api, admin_key, start_worker, recorder):
    """Off, a task still ends SUCCESS with its result and its run in the durable history (the correctness part of
    the result backend journals it), whatever mode this session's API runs in."""
    from tests.support.api import auth, dispatch, run_in_history

    start_worker("low", concurrency=1, env={"ENGINE_SPEED_PATCHES": "off"})
    task_id = dispatch(api, admin_key, tier="low", echo="stock")

    def task() -> dict[str, Any]:
        answer: dict[str, Any] = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()
        return answer

    join(lambda: task()["state"] == "SUCCESS", what="SUCCESS on the stock engine")
    assert task()["result"]["echo"] == "stock"

    run = join(lambda: run_in_history(api, admin_key, task_id), what="the run in the history")
    assert run["started_at"] is not None and run["finished_at"] is not None
