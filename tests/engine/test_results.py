"""The one-round-trip result backend keeps Celery's rule: a SUCCESS result is never overwritten."""

from __future__ import annotations

import uuid

from app.config import get_settings
from app.engine.celery_app import celery_app
from app.engine.guarantees.results import CourierRedisBackend
from app.engine.speed.results import BatchingRedisBackend
from tests.support.services import redis_client


def test_results_are_stored_with_their_ttl_and_a_success_is_final():
    backend = celery_app.backend  # the speed layer's subclass or, ENGINE_SPEED_PATCHES=off, the correctness part
    assert isinstance(backend, CourierRedisBackend)
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
    from tests.support.api import dispatch
    from tests.support.session import join

    start_worker("low", concurrency=1)
    first = dispatch(api, admin_key, tier="low", echo="before")
    join(lambda: celery_app.backend.get_task_meta(first)["status"] == "SUCCESS", what="the first run")
    redis_client().script_flush()
    second = dispatch(api, admin_key, tier="low", echo="after")
    join(lambda: celery_app.backend.get_task_meta(second)["status"] == "SUCCESS", what="the run after the flush")
    assert celery_app.backend.get_task_meta(second)["result"]["echo"] == "after"
    assert redis_client().get(f"courier:starts:{second}:0") == "1"


def _batching() -> BatchingRedisBackend:
    """The speed layer's backend, whichever engine this session's ENGINE_SPEED_PATCHES selects for celery_app."""
    return BatchingRedisBackend(app=celery_app, url=get_settings().result_backend_dsn)


def _no_lookup(*_: object, **__: object) -> object:
    raise AssertionError("looked up per call")


def _request(**extra: object) -> object:
    from celery.app.task import Context

    fields = {
        "id": "t-1",
        "task": "system.ping",
        "args": [1],
        "kwargs": {"echo": "x"},
        "hostname": "medium@host",
        "retries": 2,
        "delivery_info": {"routing_key": "medium", "exchange": "courier.tasks"},
        "children": [],
    }
    return Context(**{**fields, **extra})


def test_the_result_meta_is_celerys_built_without_its_settings_lookups(monkeypatch):
    """BatchingRedisBackend builds the extended meta itself (Celery looks two settings up per call); the stored
    JSON must not change: same keys in the same order, same values, a UTC date for a finished state only."""
    from celery.backends.redis import RedisBackend

    backend = _batching()
    assert backend._extended_with_utc
    for state, extra in (("SUCCESS", {}), ("FAILURE", {"group": "g-1", "parent_id": "p-1"}), ("STARTED", {})):
        with monkeypatch.context() as patched:  # what Celery's meta looks up per call
            patched.setattr(type(backend.app.conf), "find_value_for_key", _no_lookup)
            patched.setattr(type(backend.app), "now", _no_lookup)
            ours = backend._get_result_meta({"pong": True}, state, None, _request(**extra))
        celerys = RedisBackend._get_result_meta(backend, {"pong": True}, state, None, _request(**extra))
        ours_done, celerys_done = ours.pop("date_done"), celerys.pop("date_done")
        assert list(ours.items()) == list(celerys.items())
        assert (ours_done is None) == (celerys_done is None) == (state == "STARTED")
        if ours_done is not None:
            assert ours_done.endswith("+00:00") and ours_done[:16] == celerys_done[:16]
    assert "name" not in backend._get_result_meta(None, "SUCCESS", None, None)  # no request: no extended fields


def test_stamped_requests_and_encoded_args_take_celerys_meta():
    backend = _batching()
    stamped = _request(stamps={"on": "yes"}, stamped_headers=["on"])
    assert backend._get_result_meta(None, "SUCCESS", None, stamped)["on"] == "yes"
    encoded = backend._get_result_meta(None, "SUCCESS", None, _request(), encode=True)
    assert encoded["args"] == b"[1]"
