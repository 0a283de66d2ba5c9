"""Results batched by the worker's main process: stored before any of their messages is acked, dead-lettered
when the store fails, and stored at once outside a pool child."""

from __future__ import annotations

import uuid

from billiard.einfo import ExceptionInfo
from redis.exceptions import ConnectionError as RedisConnectionError

from app.tasks import pool
from app.tasks.celery_app import celery_app
from tests.conftest import redis_client


def _trace_ok(task_id: str) -> tuple[int, str, float]:
    """A stand-in for Celery's trace function: stores a SUCCESS result the way trace does."""
    celery_app.backend.store_result(task_id, {"ok": True}, "SUCCESS")
    return 0, "{'ok': True}", 0.01


def test_a_child_hands_its_success_back_and_the_batch_stores_it_before_the_callback_runs():
    task_ids = [str(uuid.uuid4()) for _ in range(3)]
    seen: list[tuple[str, tuple[int, object, float], str | None]] = []
    batch = pool.ResultBatch(celery_app.backend.store_many)
    for task_id in task_ids:
        # Given a task run under run_deferring (as in a pool child): its result is not in Redis yet
        returned = pool.run_deferring(_trace_ok, task_id)
        assert returned[3] and redis_client().get(f"celery-task-meta-{task_id}") is None

        def callback(outcome, task_id=task_id):
            seen.append((task_id, outcome, redis_client().get(f"celery-task-meta-{task_id}")))

        batch.add(callback, returned)
    assert seen == []
    # When the loop ticks, Then every result is stored, and only then is each callback (the ack) run
    batch.flush()
    assert [t for t, _, _ in seen] == task_ids
    assert all(outcome == (0, "{'ok': True}", 0.01) and stored is not None for _, outcome, stored in seen)
    assert celery_app.backend.get_task_meta(task_ids[0])["result"] == {"ok": True}


def test_when_the_store_fails_each_task_takes_the_failure_path_instead_of_being_acked():
    outcomes: list[tuple[int, object, float]] = []

    def unreachable(_deferred):
        raise RedisConnectionError("Redis is down")

    batch = pool.ResultBatch(unreachable)
    for _ in range(2):
        batch.add(outcomes.append, pool.run_deferring(_trace_ok, str(uuid.uuid4())))
    batch.flush()
    # Celery's on_success turns failed=1 into on_failure: rejected without requeue, i.e. dead-lettered
    assert [o[0] for o in outcomes] == [1, 1]
    assert all(isinstance(o[1], ExceptionInfo) and "Redis is down" in str(o[1].exception) for o in outcomes)


def test_outside_a_pool_child_a_success_is_stored_at_once():
    task_id = str(uuid.uuid4())
    _trace_ok(task_id)
    assert pool.collecting() is None
    assert celery_app.backend.get_task_meta(task_id)["status"] == "SUCCESS"
