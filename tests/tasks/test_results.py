"""The one-round-trip result backend keeps Celery's rule: a SUCCESS result is never overwritten."""

from __future__ import annotations

import uuid

from app.tasks.celery_app import celery_app
from tests.conftest import redis_client


def test_results_are_stored_with_their_ttl_and_a_success_is_final():
    backend = celery_app.backend
    assert type(backend).__name__ == "CourierRedisBackend"
    task_id = str(uuid.uuid4())
    # Given a task that started, then succeeded
    backend.store_result(task_id, None, "STARTED")
    assert backend.get_task_meta(task_id)["status"] == "STARTED"
    backend.store_result(task_id, {"answer": 42}, "SUCCESS")
    # When a late duplicate run reports a failure for the same id
    backend.store_result(task_id, ValueError("late duplicate"), "FAILURE")
    # Then the success stands, and the key expires with RESULT_EXPIRES_S
    meta = backend.get_task_meta(task_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"answer": 42})
    assert 0 < redis_client().ttl(f"celery-task-meta-{task_id}") <= 86_400


def test_a_redis_that_forgot_the_scripts_still_stores_results_and_starts(api, admin_key, start_worker):
    """The worker runs its two scripts by digest (EVALSHA): after a restart or SCRIPT FLUSH, Redis no longer
    knows them, and the worker must load them again rather than fail the task."""
    from tests.conftest import dispatch, join

    start_worker("low", concurrency=1)
    first = dispatch(api, admin_key, tier="low", echo="before")
    join(lambda: celery_app.backend.get_task_meta(first)["status"] == "SUCCESS", what="the first run")
    redis_client().script_flush()
    second = dispatch(api, admin_key, tier="low", echo="after")
    join(lambda: celery_app.backend.get_task_meta(second)["status"] == "SUCCESS", what="the run after the flush")
    assert celery_app.backend.get_task_meta(second)["result"]["echo"] == "after"
    assert redis_client().get(f"courier:starts:{second}:0") == "1"
