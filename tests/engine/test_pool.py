"""Results batched by the worker's main process: stored before any of their messages is acked, dead-lettered
when the store fails, and stored at once outside a pool child."""

from __future__ import annotations

import json
import uuid

import pytest
from billiard.einfo import ExceptionInfo
from celery.app.task import Context
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import get_settings
from app.engine.celery_app import celery_app
from app.engine.guarantees.sending import HANDOFF_KEY
from app.engine.speed import pool
from app.engine.speed.results import BatchingRedisBackend
from tests.support.services import redis_client

#: The speed layer's backend, whichever engine this session's ENGINE_SPEED_PATCHES selects for celery_app.
backend = BatchingRedisBackend(app=celery_app, url=get_settings().result_backend_dsn)


def _trace_ok(name: str, task_id: str, request: dict[str, object]) -> tuple[int, str, float]:
    """A stand-in for Celery's trace function: stores a SUCCESS result the way trace does (the request dict
    becomes the task's `self.request`)."""
    backend.store_result(task_id, {"ok": True}, "SUCCESS", request=Context(request))
    return 0, "{'ok': True}", 0.01


def _trace_args(task_id: str) -> tuple[str, str, dict[str, object]]:
    """Celery's trace arguments, as far as the stand-ins read them: (task name, task id, request dict)."""
    return "system.ping", task_id, {"id": task_id, "retries": 0}


def test_a_child_hands_its_success_back_and_the_batch_stores_it_before_the_callback_runs():
    task_ids = [str(uuid.uuid4()) for _ in range(3)]
    seen: list[tuple[str, tuple[int, object, float], str | None]] = []
    batch = pool.ResultBatch(backend.store_many)
    for task_id in task_ids:
        # Given a task run under run_deferring (as in a pool child): its result is not in Redis yet
        returned = pool.run_deferring(_trace_ok, None, *_trace_args(task_id))
        assert returned[3] and redis_client().get(f"celery-task-meta-{task_id}") is None

        def callback(outcome, task_id=task_id):
            seen.append((task_id, outcome, redis_client().get(f"celery-task-meta-{task_id}")))

        batch.add(callback, returned)
    assert seen == []
    # When the loop ticks, Then every result is stored, and only then is each callback (the ack) run
    batch.flush()
    assert [t for t, _, _ in seen] == task_ids
    assert all(outcome == (0, "{'ok': True}", 0.01) and stored is not None for _, outcome, stored in seen)
    assert backend.get_task_meta(task_ids[0])["result"] == {"ok": True}


def test_when_the_store_fails_each_task_takes_the_failure_path_instead_of_being_acked():
    outcomes: list[tuple[int, object, float]] = []

    def unreachable(_deferred):
        raise RedisConnectionError("Redis is down")

    batch = pool.ResultBatch(unreachable)
    for _ in range(2):
        batch.add(outcomes.append, pool.run_deferring(_trace_ok, None, *_trace_args(str(uuid.uuid4()))))
    batch.flush()
    # Celery's on_success turns failed=1 into on_failure: rejected without requeue, i.e. dead-lettered
    assert [o[0] for o in outcomes] == [1, 1]
    assert all(isinstance(o[1], ExceptionInfo) and "Redis is down" in str(o[1].exception) for o in outcomes)


def test_outside_a_pool_child_a_success_is_stored_at_once():
    task_id = str(uuid.uuid4())
    _trace_ok(*_trace_args(task_id))  # a request without a HandOff: eager, inline, or Celery's own pool
    assert backend.get_task_meta(task_id)["status"] == "SUCCESS"


def test_one_start_check_answers_for_many_attempts_and_counts_each_start():
    from app.engine.guarantees import starts
    from app.runs import revocations

    fresh, revoked, again = (str(uuid.uuid4()) for _ in range(3))
    redis_client().set(f"courier:revoked:{revoked}", "1", ex=60)
    assert not revocations.is_revoked(fresh) and revocations.is_revoked(revoked)
    # When three attempts are checked at once (one of them a second start of the same attempt)
    answers = starts.check([(fresh, 0), (revoked, 0), (again, 2), (again, 2)])
    # Then each gets its own answer, and each start is counted
    assert answers == [(False, 1), (True, 1), (False, 1), (False, 2)]
    assert starts.check([(fresh, 1)]) == [(False, 1)]  # a retry is a new attempt


def test_a_child_uses_the_main_process_answer_instead_of_asking_redis():
    seen: list[object] = []

    def trace(name: str, task_id: str, request: dict[str, object]) -> tuple[int, None, float]:
        handoff = pool.HandOff.of(Context(request))
        assert handoff is not None
        seen.append(handoff.take_start_answer())
        seen.append(handoff.take_start_answer())  # once: a second look asks Redis
        seen.append(pool.HandOff.of(Context({"id": "inline"})))  # a task run inline by this one asks for itself
        return 0, None, 0.0

    request: dict[str, object] = {"id": "t", "retries": 0}
    pool.run_deferring(trace, (True, 3), "system.ping", "t", request)
    assert seen == [(True, 3), None, None]
    assert HANDOFF_KEY not in request  # the caller's request dict (an inline pool's, in the main process) is untouched


@pytest.mark.parametrize("pool_kind", ["prefork", "solo"])
def test_a_job_waiting_behind_a_running_one_is_checked_when_it_starts_not_when_it_arrived(
    pool_kind, api, admin_key, start_worker, empty_queues
):
    """A prefork job waits in Celery's semaphore until a child is free, an inline (solo) job until the one before
    it ends: either way its revocation check must come when it starts. The revocation is written to Redis only,
    as when the broadcast to the workers is lost, so nothing but the check can stop it."""
    from tests.support.api import dispatch
    from tests.support.session import join

    # Given two tasks queued before the worker starts, so that it takes both at once (prefetch)
    running = dispatch(api, admin_key, tier="low", sleep_s=2)
    waiting = dispatch(api, admin_key, tier="low", echo="must not run")
    start_worker("low", concurrency=1, env={"CELERY_WORKER_POOL": pool_kind})
    join(lambda: _started(running), what="the first task to start")
    # When the waiting job is revoked while the first one runs
    redis_client().set(f"courier:revoked:{waiting}", "1", ex=600)
    # Then the first succeeds and the waiting one is never run
    join(lambda: celery_app.backend.get_task_meta(running)["status"] == "SUCCESS", what="the running task")
    join(lambda: celery_app.backend.get_task_meta(waiting)["status"] == "REVOKED", what="the revoked task")


def _started(task_id: str) -> bool:
    return bool(redis_client().exists(f"courier:starts:{task_id}:0"))


def test_a_task_running_through_a_warm_shutdown_is_stored_and_acked_not_run_again(start_worker, empty_queues):
    import os
    import signal
    import subprocess

    from app.constants import Tier
    from app.engine import publish
    from tests.support.services import queue_depth
    from tests.support.session import join

    worker = start_worker("low", concurrency=1)
    task_id = publish.dispatch(
        "system.ping", kwargs={"sleep_s": 3, "steps": 6}, triggered_by="test", tier=Tier.low
    ).task_id
    # (its first PROGRESS comes from the pool child: the task is running, not just handed over)
    join(lambda: celery_app.backend.get_task_meta(task_id)["status"] == "PROGRESS", what="the task to run")
    # When the worker's main process is asked to stop (a warm shutdown, as `celery worker` gets from systemd)
    os.kill(worker.process.pid, signal.SIGTERM)
    try:
        exit_code = worker.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not finish its warm shutdown:\n{worker.log()[-4000:]}")
    assert exit_code == 0, worker.log()[-4000:]
    # Then the running task finished: its result is stored and its message acked, so it will not run again
    assert celery_app.backend.get_task_meta(task_id)["status"] == "SUCCESS"
    assert queue_depth("low")["ready"] == 0


def test_with_results_in_another_redis_the_worker_checks_and_journals_in_courier_s_own(
    api, admin_key, start_worker, empty_queues, recorder
):
    """REDIS_URL and CELERY_RESULT_BACKEND may name different Redis databases: then the start checks and the
    journal go to Courier's (REDIS_URL) and the results to the backend's, in a round trip each."""
    import redis

    from tests.support.api import dispatch
    from tests.support.services import REDIS_HOST, claim_redis_db, redis_db
    from tests.support.session import join

    results_db = claim_redis_db()
    results = redis.Redis(host=REDIS_HOST, db=results_db, decode_responses=True)
    recorder.stop()  # (so the journal keeps what the worker writes)
    try:
        done = dispatch(api, admin_key, tier="low", echo="elsewhere")
        revoked = dispatch(api, admin_key, tier="low", echo="must not run")
        redis_client().set(f"courier:revoked:{revoked}", "1", ex=600)
        start_worker(
            "low",
            concurrency=1,
            env={
                "REDIS_URL": f"redis://{REDIS_HOST}:6379/{redis_db()}",
                "CELERY_RESULT_BACKEND": f"redis://{REDIS_HOST}:6379/{results_db}",
            },
        )

        def status(task_id: str) -> str | None:
            stored = results.get(f"celery-task-meta-{task_id}")
            return json.loads(stored)["status"] if stored else None

        join(lambda: status(done) == "SUCCESS", what="the result in the backend's Redis")
        join(lambda: status(revoked) == "REVOKED", what="the revoked task refused")
        # The start was counted, and the outcome journaled, in Courier's Redis, not the backend's
        assert _started(done) and not results.exists(f"courier:starts:{done}:0")
        journal = [json.loads(f["e"]) for _, f in redis_client().xrange("courier:history")]
        assert any(e["uuid"] == done and e["type"] == "task-succeeded" for e in journal)
        assert not results.exists("courier:history")
    finally:
        recorder.start()
        results.flushdb()
        results.close()


def test_a_message_published_from_an_attempt_s_request_carries_no_handoff():
    """Celery copies a request's unknown keys into its custom headers, and those into what a task publishes from
    its request (a retry): the task sender keeps the attempt's HandOff, an object of this process, out of it."""
    request = Context({"id": "t", HANDOFF_KEY: pool.HandOff(None), "custom": "kept"})
    assert HANDOFF_KEY in request.headers  # (Celery's behaviour the sender guards against)
    amqp = celery_app.amqp
    message = amqp.create_task_message("t", "system.ping", (), {}, headers=request.headers)
    published: list[dict[str, object]] = []

    class Producer:
        def publish(self, body: object, **kwargs: object) -> None:
            published.append(kwargs)

    amqp.send_task_message(
        Producer(), "system.ping", message, exchange="courier.tasks", routing_key="low", headers=request.headers
    )
    headers = published[0]["headers"]
    assert isinstance(headers, dict) and headers["custom"] == "kept" and HANDOFF_KEY not in headers
    assert HANDOFF_KEY in request.headers  # the request itself is left as it was
