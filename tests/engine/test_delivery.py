"""The path of one task on the real broker: success and history, priorities, durable revoke, worker crashes.

These tests steer workers themselves (no shared worker in this module).
"""

from __future__ import annotations

import pytest

from tests.support.api import auth, dispatch, run_in_history
from tests.support.services import queue_depth, redis_client
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("empty_queues")


def _task(api, key, task_id):
    return api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(key)).json()


def test_a_dispatched_task_reaches_success_and_appears_in_the_run_history(api, admin_key, start_worker, recorder):
    # Given a worker on every tier
    start_worker()
    # When an admin dispatches the probe on the high tier
    task_id = dispatch(api, admin_key, tier="high", echo="hello")
    # Then it succeeds with its result
    join(lambda: _task(api, admin_key, task_id)["state"] == "SUCCESS", what="SUCCESS")
    task = _task(api, admin_key, task_id)
    assert task["result"]["echo"] == "hello"
    assert task["tier"] == "high"

    # And the durable history has the run, attributed to the admin, with timings
    run = join(lambda: run_in_history(api, admin_key, task_id), what="run in history")
    assert run["triggered_by"] == admin_key[0]
    assert run["attempts"] == 1
    assert run["started_at"] is not None and run["finished_at"] is not None
    assert run["tier"] == "high"


def test_with_a_backlog_a_higher_priority_message_is_delivered_first(api, admin_key, start_worker):
    # Given a backlog of five low-priority messages in the high queue and no worker consuming it
    low = [dispatch(api, admin_key, tier="high", priority=1, echo=f"low-{i}") for i in range(5)]
    # When a priority-9 message is published after them and a single-process worker starts
    urgent = dispatch(api, admin_key, tier="high", priority=9, echo="urgent")
    assert queue_depth("high")["ready"] == 6
    start_worker("high", concurrency=1)
    # Then the urgent message ran before every one of the backlog
    ids = [urgent, *low]
    join(lambda: all(_task(api, admin_key, t)["state"] == "SUCCESS" for t in ids), what="all to finish")
    started = {t: _task(api, admin_key, t)["result"]["started_at"] for t in ids}
    assert started[urgent] < min(started[t] for t in low)
    assert _task(api, admin_key, urgent)["result"]["priority"] == 9


def test_a_task_revoked_before_it_starts_never_runs_even_across_a_worker_restart(api, admin_key, start_worker):
    # Given a task waiting in the low queue while a worker is up but not consuming low
    first = start_worker("high")
    task_id = dispatch(api, admin_key, tier="low", echo="must not run")
    # When an admin revokes it, and then every worker restarts (Celery's in-memory revoke list is gone)
    response = api.post(f"/api/v1/tasks/task/{task_id}/revoke", json={}, headers=auth(admin_key))
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] is True
    first.stop()
    redis_client().delete(f"courier:revoked:{task_id}")  # even Redis forgot it: SQL restores it at boot
    start_worker("high,medium,low", concurrency=1)
    # Then the message is consumed but the task never runs: its result stays REVOKED, not SUCCESS
    from app.engine.celery_app import celery_app

    join(lambda: celery_app.AsyncResult(task_id).state in ("REVOKED", "SUCCESS"), what="the worker to take it")
    task = _task(api, admin_key, task_id)
    assert task["state"] == "REVOKED"
    assert task["result"] is None
    assert task["revoked"] is True


def test_a_worker_killed_mid_task_loses_nothing_and_the_task_completes_after_a_restart(api, admin_key, start_worker):
    # Given a worker running a slow task
    doomed = start_worker("medium", concurrency=1)
    task_id = dispatch(api, admin_key, tier="medium", sleep_s=3, echo="survivor")
    join(lambda: redis_client().get(f"courier:starts:{task_id}:0"), what="the task to start")
    # When the whole worker is SIGKILLed mid-task
    doomed.kill()
    # Then the broker still holds the message
    join(lambda: queue_depth("medium")["ready"] == 1, what="the message to be requeued")
    # And a new worker completes it under the same id
    start_worker("medium", concurrency=1)
    join(lambda: _task(api, admin_key, task_id)["state"] == "SUCCESS", timeout=60, what="SUCCESS after restart")
    assert _task(api, admin_key, task_id)["result"]["echo"] == "survivor"
