"""A Redis outage on the worker's own path (the start check, the result store) is retried, not taken for the
task's failure; past its budget the dead letter names the Redis error.

Each test runs a worker whose result backend and Redis are a `redis-server` the test owns on a free port, and
kills and restarts that server; the session's Redis, the API and the recorder are untouched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis

from tests.support.api import auth, dispatch, letters, one_letter
from tests.support.processes import OwnRedis
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("empty_queues")


@pytest.fixture
def own_redis(own_redis: Callable[..., OwnRedis]) -> OwnRedis:
    """One redis-server without persistence of the test's own, started; removed afterwards (this overrides the root
    conftest's factory of the same name, which it calls once)."""
    return own_redis()


def _result_state(server: OwnRedis, task_id: str) -> str | None:
    """The state Celery stored for a task in `server` (None before it stored one)."""
    raw = server.client().get(f"celery-task-meta-{task_id}")
    return json.loads(raw)["status"] if raw else None


def _outage_worker(start_worker, own: OwnRedis, *, outage_retries: int):
    """A worker on `high` whose results, start checks and heartbeat live in `own` (ready once it beats there)."""
    worker = start_worker(
        "high",
        concurrency=1,
        wait=False,
        env={
            "CELERY_RESULT_BACKEND": own.url,
            "REDIS_URL": own.url,
            "OUTAGE_RETRY_MAX": str(outage_retries),
            "OUTAGE_RETRY_BACKOFF_S": "1",
            "OUTAGE_RETRY_BACKOFF_MAX_S": "2",
        },
    )

    def ready() -> bool:
        if worker.process.poll() is not None:
            pytest.fail(f"worker exited with {worker.process.returncode}:\n{worker.log()[-4000:]}")
        return bool(own.client().exists(f"courier:worker:{worker.hostname}")) and "ready." in worker.log()

    join(ready, timeout=60, what="the outage worker to be ready")
    return worker


def test_a_redis_outage_at_the_start_check_is_retried_and_the_task_runs_once_redis_is_back(
    api, admin_key, start_worker, recorder, own_redis
):
    # Given a worker whose Redis goes down
    worker = _outage_worker(start_worker, own_redis, outage_retries=10)
    own_redis.kill()
    # When a task reaches it, its start check (revoked? how many starts?) cannot reach Redis
    task_id = dispatch(api, admin_key, tier="high")
    join(lambda: "Redis is down:" in worker.log() and "ConnectionError" in worker.log(), timeout=30,
         what="the failed check")  # fmt: skip
    time.sleep(2.5)  # (and the worker's heartbeat, every second here, fails a few times)
    # And Redis comes back
    own_redis.start()
    # Then the task is tried again, runs, and its result is stored; it was never dead-lettered
    join(lambda: _result_state(own_redis, task_id) == "SUCCESS", timeout=60, what="the task to succeed")
    assert letters(api, admin_key, task_id) == []
    # And the worker logged the outage as it began and as it ended, not once per attempt put back
    join(lambda: "Redis is back after" in worker.log(), timeout=10, what="the outage's end in the worker log")
    assert worker.log().count("Redis is down:") == 1
    assert "Could not write the heartbeat" not in worker.log()  # (it was a warning and a traceback per beat)


def test_a_result_that_cannot_be_stored_is_run_again_once_redis_is_back(
    api, admin_key, start_worker, recorder, own_redis
):
    # Given a task that has passed its start check and is running
    worker = _outage_worker(start_worker, own_redis, outage_retries=10)
    task_id = dispatch(api, admin_key, tier="high", sleep_s=2)
    join(lambda: own_redis.client().exists(f"courier:starts:{task_id}:0"), what="the task to start")
    # When Redis dies before its result is stored
    own_redis.kill()
    # (the speed layer's pool stores the result from the worker's main process, Celery's own pool from the child)
    failed_store = ("storing 1 results failed", "Redis was unreachable at the task or the store of its outcome")
    join(lambda: any(line in worker.log() for line in failed_store), timeout=30, what="the failed result store")
    own_redis.start()
    # Then the task runs again (at least once: the product's rule) and its result is stored; no dead letter
    join(lambda: _result_state(own_redis, task_id) == "SUCCESS", timeout=60, what="the task to succeed")
    assert letters(api, admin_key, task_id) == []


def test_a_redis_outage_past_the_budget_is_dead_lettered_naming_the_redis_error_and_replays(
    api, admin_key, start_worker, recorder, own_redis
):
    # Given a worker allowed two outage retries, and its Redis down for good
    _outage_worker(start_worker, own_redis, outage_retries=2)
    own_redis.kill()
    # When a task reaches it
    task_id = dispatch(api, admin_key, tier="high")
    # Then, after the retries, one dead letter says what happened: Redis, not the task (nor "malformed")
    letter = one_letter(api, admin_key, task_id, timeout=90)
    assert (letter["reason"], letter["error_class"]) == ("infra_unavailable", "ConnectionError")
    assert "Redis was unreachable at the start check" in letter["error"]
    assert letter["queue"] == "high" and letter["retries"] == 0
    # And once Redis is back, replaying it runs the task (the outage headers do not follow it)
    own_redis.start()
    answer = api.post(
        f"/api/v1/tasks/dead-letters/{letter['id']}/replay",
        json={"why": "redis is back"},
        headers=auth(admin_key),
    )
    assert answer.status_code == 200, answer.text
    join(lambda: _result_state(own_redis, task_id) == "SUCCESS", timeout=60, what="the replay to succeed")


def test_every_redis_outage_error_counts_as_an_outage_with_its_own_class():
    from app.engine.guarantees import outages

    # BusyLoadingError (a Redis loading its data set) is a ConnectionError; a timeout and a read-only replica too
    for error in (redis.exceptions.BusyLoadingError("loading"), redis.exceptions.TimeoutError("slow")):
        outage = outages.cause(error)
        assert outage is not None and outage.error_class == type(error).__name__
    assert outages.cause(ValueError("the task's own")) is None
    # And the backoff never drops under a second (no hot loop) and stays under the cap
    from app.config import Settings

    settings = Settings(_env_file=None, outage_retry_backoff_s=1, outage_retry_backoff_max_s=2)
    assert all(1 <= outages.backoff_s(done, settings) <= 2 for done in range(20) for _ in range(5))


@pytest.mark.parametrize("why", ["memory", "disk"])
def test_a_redis_refusing_writes_is_an_outage_the_task_runs_once_it_writes_again_and_is_never_dead_lettered(
    api, admin_key, start_worker, recorder, own_redis, why
):
    # Given a worker whose Redis answers but refuses every write: at its maxmemory under noeviction (OOM), or unable
    # to persist, its disk full (MISCONF)
    worker = _outage_worker(start_worker, own_redis, outage_retries=10)
    own_redis.refuse_writes(why)
    # When a task reaches it, its start check (a write) is refused
    task_id = dispatch(api, admin_key, tier="high")
    refused = {"memory": "OutOfMemoryError", "disk": "unable to persist to disk"}[why]
    join(lambda: refused in worker.log(), timeout=30, what="the refused start check")
    time.sleep(2.5)
    # And Redis writes again
    own_redis.accept_writes()
    # Then the task was put back, not taken for a failure (it was rejected and recorded as "malformed"): it runs
    join(lambda: _result_state(own_redis, task_id) == "SUCCESS", timeout=60, what="the task to succeed")
    assert letters(api, admin_key, task_id) == []
