"""The run-history journal: workers append each run's outcome, carrying its start, to a Redis stream in round
trips they already make (a long run's start also gets an entry of its own while it runs), and the recorder turns
it into SQL, acknowledging only after its commit."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pytest
import redis

from app.constants import HISTORY_GROUP, HISTORY_STREAM
from tests.support.api import auth, dispatch
from tests.support.processes import free_port
from tests.support.services import redis_client
from tests.support.session import join


def _entries_of(task_id: str) -> list[dict[str, Any]]:
    events = (json.loads(fields["e"]) for _, fields in redis_client().xrange(HISTORY_STREAM))
    return [event for event in events if event.get("uuid") == task_id]


def _finished(api: Any, key: tuple[str, str], task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(key)).json()
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    return join(done, what=f"task {task_id} to finish")  # type: ignore[no-any-return]


def _run(api: Any, key: tuple[str, str], task_id: str) -> dict[str, Any] | None:
    runs = api.get("/api/v1/tasks/runs", params={"limit": 200}, headers=auth(key)).json()["items"]
    return next((r for r in runs if r["task_id"] == task_id and r["state"] == "SUCCESS"), None)


def test_a_run_is_journaled_then_recorded_and_removed_from_the_stream(api, admin_key, start_worker, recorder):
    # Given no recorder running, so the journal keeps what the worker writes
    recorder.stop()
    try:
        worker = start_worker("medium", concurrency=1)
        task_id = dispatch(api, admin_key, echo="journal")
        _finished(api, admin_key, task_id)
        # Then the stream holds one entry, the outcome, which carries the start: what the history needs
        (succeeded,) = _entries_of(task_id)
        started = succeeded["start"]
        assert (started["type"], succeeded["type"]) == ("task-started", "task-succeeded")
        assert started["name"] == succeeded["name"] == "system.ping"
        assert started["hostname"] == worker.hostname and started["retries"] == 0
        assert 0 <= succeeded["runtime"] < 60 and succeeded["timestamp"] >= started["timestamp"]
        # with the publisher's meta from the message headers
        assert (started["tier"], started["triggered_by"]) == ("medium", admin_key[0])
        assert started["timestamp"] - 60 < float(started["dispatched_at"]) <= started["timestamp"]
        redis_client().delete(f"courier:task:{task_id}")  # (so the recorder can only use the entry)
    finally:
        recorder.start()
    # When the recorder runs, the run reaches SQL, attributed, and its entries leave the stream
    run = join(lambda: _run(api, admin_key, task_id), what="the run to be recorded")
    assert run["attempts"] == 1 and run["worker"] == worker.hostname and run["runtime_s"] is not None
    assert (run["tier"], run["triggered_by"]) == ("medium", admin_key[0])
    join(lambda: not _entries_of(task_id), what="the entries to be deleted after the commit")


def test_a_long_run_is_journaled_as_started_while_it_runs_and_recorded_as_running(
    api, admin_key, start_worker, recorder
):
    from app.runs.journal import START_ENTRY_AFTER_S

    worker = start_worker("medium", concurrency=1)
    task_id = dispatch(api, admin_key, sleep_s=START_ENTRY_AFTER_S + 4)

    def running() -> dict[str, Any] | None:
        runs = api.get("/api/v1/tasks/runs", params={"limit": 200}, headers=auth(admin_key)).json()["items"]
        return next((r for r in runs if r["task_id"] == task_id and r["state"] == "STARTED"), None)

    # While it runs, the worker's main process journals its start, and the history shows it running, attributed
    run = join(running, what="the run to be recorded as running")
    assert (run["name"], run["worker"], run["tier"]) == ("system.ping", worker.hostname, "medium")
    assert run["triggered_by"] == admin_key[0] and run["attempts"] == 1
    # And when it ends, it is recorded as a success, once
    assert _finished(api, admin_key, task_id)["state"] == "SUCCESS"
    assert join(lambda: _run(api, admin_key, task_id), what="the success to be recorded")["attempts"] == 1


def test_entries_a_recorder_took_but_never_committed_are_recorded_after_its_restart(
    api, admin_key, start_worker, recorder
):
    recorder.stop()
    try:
        start_worker("medium", concurrency=1)
        task_id = dispatch(api, admin_key, echo="pending")
        _finished(api, admin_key, task_id)
        # Given the recorder's consumer took the entries and died before its commit (they are pending)
        assert any(g["name"] == HISTORY_GROUP for g in redis_client().xinfo_groups(HISTORY_STREAM))
        taken = redis_client().xreadgroup(HISTORY_GROUP, "recorder", {HISTORY_STREAM: ">"})
        assert taken and any(json.loads(f["e"])["uuid"] == task_id for _, f in taken[0][1])
        assert redis_client().xpending(HISTORY_STREAM, HISTORY_GROUP)["pending"] >= 1
    finally:
        recorder.start()
    # Then the restarted recorder records them and acknowledges them
    join(lambda: _run(api, admin_key, task_id), what="the pending entries to be recorded")
    join(lambda: redis_client().xpending(HISTORY_STREAM, HISTORY_GROUP)["pending"] == 0, what="no pending entries")


def test_a_batch_committed_just_before_redis_was_lost_is_recorded_once_when_it_returns(
    api, admin_key, start_worker, recorder, monkeypatch
):
    from app import recorder as recording
    from app.config import get_settings

    recorder.stop()
    try:
        start_worker("medium", concurrency=1)
        task_id = dispatch(api, admin_key, echo="lost redis")
        _finished(api, admin_key, task_id)
        # Given a recorder took the run's entries
        taking = recording.Recorder(get_settings())
        assert taking.read_journal(pending=False, block_ms=None) >= 1
        # When Redis is gone between its commit and its acknowledgement (nothing listens on that port)
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            gone = redis.Redis(port=unused.getsockname()[1], socket_connect_timeout=1)
            monkeypatch.setattr(recording, "get_redis", lambda: gone)
            with pytest.raises(redis.ConnectionError):
                taking.flush()
        monkeypatch.undo()
        # Then the run is in SQL and its entries are still pending
        assert _run(api, admin_key, task_id) is not None
        assert redis_client().xpending(HISTORY_STREAM, HISTORY_GROUP)["pending"] >= 1
    finally:
        recorder.start()
    # And the recorder, back, records them again without a second run or attempt, and acknowledges them
    join(lambda: redis_client().xpending(HISTORY_STREAM, HISTORY_GROUP)["pending"] == 0, what="no pending entries")
    runs = api.get("/api/v1/tasks/runs", params={"limit": 200}, headers=auth(admin_key)).json()["items"]
    (run,) = [r for r in runs if r["task_id"] == task_id]
    assert (run["state"], run["attempts"]) == ("SUCCESS", 1)


def test_with_history_off_a_worker_journals_nothing(api, admin_key, start_worker, recorder):
    recorder.stop()  # (so nothing could have been recorded and deleted before the look)
    try:
        start_worker("low", concurrency=1, env={"HISTORY_ENABLED": "false"})
        task_id = dispatch(api, admin_key, tier="low", echo="quiet")
        assert _finished(api, admin_key, task_id)["state"] == "SUCCESS"
        assert _entries_of(task_id) == []
    finally:
        recorder.start()


def test_the_healthcheck_sees_a_running_recorder_and_not_a_stopped_one(recorder):
    import subprocess
    import sys

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.recorder", "--check"]
        return subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, **env})

    assert join(lambda: check().returncode == 0, what="the running recorder to be seen")
    assert check().stdout == "A recorder is reading the run-history journal.\n"
    # (a check that finds none says so, in a line an operator reads in the healthcheck's log)
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    none = check(REDIS_URL=unreachable, CELERY_RESULT_BACKEND=unreachable)
    assert none.returncode == 1 and none.stdout.startswith("No recorder has read the run-history journal")
    from app import recorder as module

    # A running recorder beats every 0.5 s; the fixture may have just restarted it, hence the wait for the first.
    assert join(lambda: module.is_alive(max_idle_s=1.0), what="the recorder's first heartbeat")
    # With nothing to record it stays alive (Redis 7.0 leaves a consumer's idle time growing on empty reads).
    time.sleep(3)
    assert module.is_alive(max_idle_s=2.0)
    recorder.stop()
    try:
        join(lambda: not module.is_alive(max_idle_s=1.0), what="the stopped recorder to go quiet")
    finally:
        recorder.start()


def test_the_recorder_runs_behind_the_workers_at_a_lower_cpu_priority(recorder):
    import os

    from app.config import get_settings

    assert recorder.process is not None
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if own >= 19:
        pytest.skip("the suite already runs at the lowest priority Linux has (nice 19): nothing lower to go to")
    # Linux caps niceness at 19: a suite run under `nice -n 10` sees the recorder at min(19, 10 + the setting).
    pid, wanted = recorder.process.pid, min(19, own + get_settings().history_recorder_nice)
    join(lambda: os.getpriority(os.PRIO_PROCESS, pid) == wanted, what="the recorder to lower its priority")


def _history_row(api: Any, key: tuple[str, str], task_id: str, state: str) -> dict[str, Any] | None:
    runs = api.get("/api/v1/tasks/runs", params={"limit": 200}, headers=auth(key)).json()["items"]
    return next((r for r in runs if r["task_id"] == task_id and r["state"] == state), None)


def test_a_run_that_never_started_is_recorded_with_its_name_tier_and_caller(
    api, admin_key, start_worker, recorder, empty_queues
):
    # Given a task revoked before any worker took it, and one whose message expired before it could start
    revoked = dispatch(api, admin_key, tier="low", echo="revoked before it ran")
    answer = api.post(f"/api/v1/tasks/task/{revoked}/revoke", json={}, headers=auth(admin_key))
    assert answer.status_code == 200 and answer.json()["revoked"], answer.text
    expired = dispatch(api, admin_key, tier="medium", expires_s=0.001)
    time.sleep(0.1)
    start_worker("medium", concurrency=1)
    # When the history records them (no start entry: the expiry reaches the journal as a revocation)
    for task_id, state, tier in ((revoked, "REVOKED", "low"), (expired, "DEAD_LETTERED", "medium")):
        run = join(lambda t=task_id, s=state: _history_row(api, admin_key, t, s), what=f"{task_id} in the history")
        # Then its row says what ran, where and for whom, so the history's filters and its caller still find it
        # once the publisher's meta has left Redis
        assert (run["name"], run["tier"], run["triggered_by"]) == ("system.ping", tier, admin_key[0]), run
        redis_client().delete(f"courier:task:{task_id}")
        found = api.get(
            "/api/v1/tasks/runs", params={"name": "system.ping", "triggered_by": admin_key[0]}, headers=auth(admin_key)
        ).json()["items"]
        assert task_id in {r["task_id"] for r in found}
