"""The benchmark's helpers: a restarted process is judged by its own output only; the Redis dbs it claims; how it
counts stored results."""

from __future__ import annotations

import json
import sys

import pytest
import redis

from bench.common import CLAIM_KEY, LEGACY_CLAIM_KEY, REDIS_HOST, Process, redis_db, stored_answers


def test_a_restarted_process_does_not_count_its_predecessors_ready_line(tmp_path):
    first = Process("worker", [sys.executable, "-c", "print('ready.', flush=True)"], {}, tmp_path)
    first.popen.wait(30)
    # When the same process is started again (its log is appended to)
    script = "import time; time.sleep(2); print('ready.', flush=True); time.sleep(60)"
    second = Process("worker", [sys.executable, "-c", script], {}, tmp_path)
    try:
        # Then the first one's "ready." is not the second's
        assert "ready." not in second.log()
        with pytest.raises(TimeoutError):
            second.wait_for_log("ready.", timeout=0.5)
        second.wait_for_log("ready.", timeout=30)
    finally:
        second.stop()


def test_the_benchmark_never_takes_a_redis_db_claimed_by_a_test_session_or_an_earlier_benchmark():
    # Given this test session's claimed db (tests/support/services.py), and a db an earlier benchmark holds with its
    # own key
    from tests.support import services

    session_db = services.redis_db()

    with redis_db() as earlier, redis.Redis(host=REDIS_HOST, db=earlier) as client:
        client.delete(CLAIM_KEY)  # (as an earlier benchmark leaves it: its own key only)
        # When the benchmark claims dbs meanwhile
        with redis_db() as first, redis_db() as second:
            # Then it gets other dbs, each its own, marked with both keys (so neither kind takes them)
            assert len({session_db, earlier, first, second}) == 4
            with redis.Redis(host=REDIS_HOST, db=first) as mine:
                assert mine.get(CLAIM_KEY).startswith(b"bench-") and mine.get(LEGACY_CLAIM_KEY) == mine.get(CLAIM_KEY)
        # And a released db is flushed (its claims with it)
        with redis.Redis(host=REDIS_HOST, db=first) as released:
            assert released.dbsize() == 0
    with redis.Redis(host=REDIS_HOST, db=session_db) as client:
        assert client.exists(CLAIM_KEY)


def test_only_a_successful_probes_answer_counts_as_a_stored_result():
    with redis_db() as db, redis.Redis(host=REDIS_HOST, db=db) as client:
        # Given Celery result documents: two answers, a failure, a success of another shape, and Dramatiq's lists
        client.set("celery-task-meta-a", json.dumps({"status": "SUCCESS", "result": {"pong": True}}))
        client.set("celery-task-meta-b", json.dumps({"status": "SUCCESS", "result": {"pong": True, "x": 1}}))
        client.set("celery-task-meta-c", json.dumps({"status": "FAILURE", "result": {"pong": True}}))
        client.set("celery-task-meta-d", json.dumps({"status": "SUCCESS", "result": None}))
        # Then only the two answers count, among every key or the keys asked for
        assert stored_answers(db, "celery") == 2
        assert stored_answers(db, "celery", ["celery-task-meta-a", "celery-task-meta-c"]) == 1
        client.flushdb()
        client.set(CLAIM_KEY, "bench-test")
        client.lpush("dramatiq-results:1", json.dumps({"pong": True}))
        client.lpush("dramatiq-results:2", json.dumps({"error": "boom"}))
        assert stored_answers(db, "dramatiq") == 1
