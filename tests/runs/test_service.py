"""Folding Celery events into the run history (service level, on the session's PostgreSQL)."""

from __future__ import annotations

import time
import uuid

from app.constants import TaskState
from app.db import session_scope
from app.runs import service
from app.runs.models import TaskRun


def _event(kind: str, task_id: str, at: float, **fields):
    return {"type": kind, "uuid": task_id, "timestamp": at, "hostname": "w@test", **fields}


def test_events_arriving_out_of_order_end_in_the_latest_state():
    task_id = str(uuid.uuid4())
    now = time.time()
    # Given the success event is written before the received and started events (separate batches)
    with session_scope() as session:
        service.record_events(
            session=session,
            events=[_event("task-succeeded", task_id, now + 2, runtime=0.5)],
            meta={task_id: {"name": "system.ping", "tier": "low", "triggered_by": "k"}},
        )
    with session_scope() as session:
        service.record_events(
            session=session,
            events=[
                _event("task-received", task_id, now, name="system.ping", retries=0),
                _event("task-started", task_id, now + 1),
            ],
        )
    # Then the run is SUCCESS with every timestamp filled in
    with session_scope() as session:
        run = session.get(TaskRun, task_id)
        assert run.state == TaskState.SUCCESS
        assert run.received_at and run.started_at and run.finished_at
        assert run.runtime_s == 0.5 and run.triggered_by == "k" and run.tier == "low"


def test_a_revoked_run_stays_revoked_whatever_events_follow():
    task_id = str(uuid.uuid4())
    with session_scope() as session:
        service.mark_revoked(session=session, task_id=task_id, name="system.ping", revoked_by="admin")
    with session_scope() as session:
        service.record_events(
            session=session,
            events=[
                _event("task-received", task_id, time.time() + 5, name="system.ping", retries=0),
            ],
        )
    with session_scope() as session:
        assert session.get(TaskRun, task_id).state == TaskState.REVOKED


def test_a_success_after_a_revoke_is_the_runs_outcome_whenever_it_happened():
    # Given two runs revoked before the history heard of their end: one ended after the revoke (it was running,
    # and nothing stopped it), one just before it
    now = time.time()
    later, earlier = str(uuid.uuid4()), str(uuid.uuid4())
    with session_scope() as session:
        for task_id in (later, earlier):
            service.mark_revoked(session=session, task_id=task_id, name="system.ping", revoked_by="admin")
    # When their success is recorded
    with session_scope() as session:
        service.record_events(
            session=session,
            events=[
                _event("task-succeeded", later, now + 5, runtime=6.0),
                _event("task-succeeded", earlier, now - 1, runtime=0.2),
            ],
        )
    # Then each run is SUCCESS, finished when it really finished
    with session_scope() as session:
        for task_id, at in ((later, now + 5), (earlier, now - 1)):
            run = session.get(TaskRun, task_id)
            assert run.state == TaskState.SUCCESS and run.error is None
            assert abs(run.finished_at.timestamp() - at) < 0.01


def test_retries_count_attempts_and_keep_the_last_error():
    task_id = str(uuid.uuid4())
    now = time.time()
    with session_scope() as session:
        service.record_events(
            session=session,
            events=[
                _event("task-received", task_id, now, name="system.ping", retries=0),
                _event("task-retried", task_id, now + 1, exception="TransientError('503')"),
                _event("task-received", task_id, now + 2, name="system.ping", retries=1),
                _event("task-failed", task_id, now + 3, exception="TransientError('503 again')"),
            ],
        )
    with session_scope() as session:
        run = session.get(TaskRun, task_id)
        assert (run.state, run.attempts, run.error) == (TaskState.FAILURE, 2, "TransientError('503 again')")


def test_prune_deletes_only_old_finished_runs():
    from datetime import timedelta

    from app.db import utcnow

    old_done, old_running = str(uuid.uuid4()), str(uuid.uuid4())
    with session_scope() as session:
        for task_id, state in ((old_done, TaskState.SUCCESS), (old_running, TaskState.STARTED)):
            session.add(
                TaskRun(
                    task_id=task_id,
                    name="system.ping",
                    state=state,
                    attempts=1,
                    created_at=utcnow() - timedelta(days=40),
                )
            )
    with session_scope() as session:
        assert service.prune(session=session, older_than_days=30) >= 1
    with session_scope() as session:
        assert session.get(TaskRun, old_done) is None
        assert session.get(TaskRun, old_running) is not None


def test_a_large_batch_is_recorded_whole_and_a_second_batch_in_the_same_transaction_sees_only_its_rows():
    """PostgreSQL batches go through a staging table (binary COPY, then one upsert). Every run of a batch lands,
    a REVOKED run in it stays REVOKED, and a second batch in the same transaction (the staging table is emptied
    only at commit) upserts only its own rows: the same run twice in one upsert is an error in PostgreSQL."""
    revoked = str(uuid.uuid4())
    with session_scope() as session:
        service.mark_revoked(session=session, task_id=revoked, name="system.ping", revoked_by="admin")
    ids = [str(uuid.uuid4()) for _ in range(300)]
    now = time.time()
    meta = {task_id: {"tier": "medium", "triggered_by": "k", "dispatched_at": str(now - 1)} for task_id in ids}
    started = [_event("task-started", t, now, name="system.ping", retries=0) for t in [*ids, revoked]]
    with session_scope() as session:
        assert service.record_events(session=session, events=started, meta=meta) == 301
        succeeded = [_event("task-succeeded", t, now + 1, runtime=0.25) for t in ids[:100]]
        assert service.record_events(session=session, events=succeeded) == 100
    with session_scope() as session:
        runs = {run.task_id: run for run in session.query(TaskRun).filter(TaskRun.task_id.in_([*ids, revoked]))}
    assert len(runs) == 301 and runs[revoked].state == TaskState.REVOKED
    assert {runs[t].state for t in ids[:100]} == {TaskState.SUCCESS}
    assert {runs[t].state for t in ids[100:]} == {TaskState.STARTED}
    assert runs[ids[0]].runtime_s == 0.25 and runs[ids[0]].triggered_by == "k" and runs[ids[0]].tier == "medium"
    assert runs[ids[-1]].started_at is not None and runs[ids[-1]].finished_at is None


def test_a_batch_after_one_that_rolled_back_is_still_recorded():
    """The staging table is made inside the first batch's transaction; a rollback takes it away again."""
    import pytest

    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(RuntimeError), session_scope() as session:
        service.record_events(session=session, events=[_event("task-started", first, time.time(), name="n")])
        raise RuntimeError("the commit never happens")
    for _ in range(3):  # (whichever pooled connection the next batches get)
        with session_scope() as session:
            service.record_events(session=session, events=[_event("task-started", second, time.time(), name="n")])
    with session_scope() as session:
        assert session.get(TaskRun, first) is None
        assert session.get(TaskRun, second).state == TaskState.STARTED


def test_the_batch_lookup_is_planned_for_each_batch_never_from_a_cached_generic_plan():
    """The recorder looks up a batch's known runs with `task_id = ANY(:ids)` on a long-lived connection, which
    psycopg prepares after a few batches. PostgreSQL then reuses a generic plan made while the table was small: a
    sequential scan comparing every row with every id of the array, whose cost grew with the history (0.2 to 1.1 ms
    of PostgreSQL CPU per task over 15,000 runs in the benchmark, 0.6 s per batch at 14,000). Planned per batch,
    the array is a constant: an index scan on a large table, a hashed comparison on a small one."""
    import pytest
    from sqlalchemy import text

    with session_scope() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("plan caching is PostgreSQL's")
        for _ in range(15):  # (psycopg prepares at the 5th; PostgreSQL may go generic after 5 more)
            events = [_event("task-started", str(uuid.uuid4()), time.time(), name="n") for _ in range(20)]
            service.record_events(session=session, events=events)
        plans = session.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '%FROM task_runs%task_runs.task_id = ANY%'"
            )
        ).all()
    assert plans, "the lookup was never prepared: this test no longer sees what it checks"
    assert [generic for generic, _ in plans] == [0] * len(plans)
    assert sum(custom for _, custom in plans) >= 5


def test_a_batch_holding_text_no_sql_column_takes_is_recorded_whole_its_values_escaped_and_cut():
    # Given a batch whose events came from a producer of its own: a task id and a worker name longer than their
    # columns, an error and a traceback holding a NUL and an unpaired surrogate (PostgreSQL refused each of them,
    # the whole batch with it, and the recorder retried that batch forever), beside an ordinary run
    long_id, plain_id, now = "x" * 100, str(uuid.uuid4()), time.time()
    odd = "ValueError('bad\x00byte \ud800')"
    events = [
        _event("task-received", long_id, now, name="n" * 300, retries=0),
        {
            **_event("task-retried", long_id, now + 1, exception=odd, traceback=f"Traceback:\n  {odd}"),
            "hostname": "h" * 300,
        },
        _event("task-succeeded", plain_id, now + 1, runtime=0.1),
    ]
    # When it is recorded
    with session_scope() as session:
        assert service.record_events(session=session, events=events) == 2
    # Then both runs are there, the odd text escaped and every value cut to its column
    with session_scope() as session:
        run = session.get(TaskRun, "x" * 64)
        assert run is not None and run.state == TaskState.RETRY
        assert run.name == "n" * 200 and run.worker == "h" * 200
        assert run.error == "ValueError('bad\\x00byte \\ud800')"
        (attempt,) = service.attempts(session=session, task_id="x" * 64)
        assert attempt.error == run.error and "\\x00" in (attempt.traceback or "")
        assert session.get(TaskRun, plain_id).state == TaskState.SUCCESS


def test_a_batch_holding_counts_times_and_meta_no_column_takes_is_recorded_whole():
    # Given start events whose `retries` (the message's header, which any producer writes) is a list, a count past
    # an SQL integer, negative, and whose publisher meta has a dispatch time no datetime holds and a triggering key
    # longer than its column: each refused the whole batch (TypeError, overflow), and the recorder retried it
    # forever, recording nothing after it
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(5)]
    retries = [[1], 2**63 - 1, 10**30, -1, "x"]
    events = [_event("task-started", i, now, name="system.ping", retries=r) for i, r in zip(ids, retries, strict=True)]
    events.append({**_event("task-succeeded", ids[0], now + 1), "runtime": "fast"})
    meta = {
        ids[1]: {"tier": "t" * 50, "triggered_by": "k" * 500, "dispatched_at": "garbage"},
        ids[2]: {"tier": "medium", "triggered_by": "k", "dispatched_at": "1e308"},
    }
    # When it is recorded
    with session_scope() as session:
        assert service.record_events(session=session, events=events, meta=meta) == 5
    # Then every run is there: a count it cannot use counts as the first attempt, the rest cut to its column
    with session_scope() as session:
        runs = [session.get(TaskRun, i) for i in ids]
        assert [r.attempts for r in runs] == [1, 1, 1, 1, 1]
        assert runs[0].state == TaskState.SUCCESS and runs[0].runtime_s is None
        assert runs[1].tier == "t" * 20 and runs[1].triggered_by == "k" * 100
        assert abs(runs[1].created_at.timestamp() - now) < 5 and abs(runs[2].created_at.timestamp() - now) < 5


def test_prune_deletes_the_failed_attempts_of_the_runs_it_deletes_and_of_runs_already_gone():
    """task_attempts grew for ever: prune deleted old runs but never their attempts (one row per retry and per
    failure), so at a steady rate of failures the table grew without bound whatever HISTORY_RETENTION_DAYS said."""
    from datetime import timedelta

    from app.db import utcnow
    from app.runs.models import TaskAttempt

    old, recent, gone = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    long_ago = utcnow() - timedelta(days=40)
    # Given an old failed run with two attempts, a recent one with one, and an old attempt whose run is gone
    with session_scope() as session:
        session.add(
            TaskRun(task_id=old, name="system.ping", state=TaskState.DEAD_LETTERED, attempts=2, created_at=long_ago)
        )
        session.add(TaskRun(task_id=recent, name="system.ping", state=TaskState.DEAD_LETTERED, attempts=1))
        for task_id, attempt, at in (
            (old, 1, long_ago),
            (old, 2, long_ago),
            (recent, 1, utcnow()),
            (gone, 1, long_ago),
        ):
            session.add(TaskAttempt(task_id=task_id, attempt=attempt, outcome="retry", error="boom", at=at))
    # When the history is pruned until nothing is left to prune
    with session_scope() as session:
        assert service.prune(session=session, older_than_days=30) >= 4
    # Then the old run and every attempt older than the retention are gone; the recent run keeps its attempt
    with session_scope() as session:
        left = {row.task_id for row in session.query(TaskAttempt).filter(TaskAttempt.task_id.in_([old, recent, gone]))}
        assert session.get(TaskRun, old) is None
        assert left == {recent}


def test_prune_deletes_a_backlog_a_batch_per_call_until_none_is_left():
    """One DELETE of a whole backlog (a first prune of a busy history, a shortened retention) ran past the task's
    time limit, which rolled it back, every hour: the history never shrank. Each call now deletes one batch."""
    from datetime import timedelta

    from app.db import utcnow

    # Given 25 finished runs older than the retention
    ids = [str(uuid.uuid4()) for _ in range(25)]
    with session_scope() as session:
        for task_id in ids:
            session.add(
                TaskRun(
                    task_id=task_id,
                    name="system.ping",
                    state=TaskState.SUCCESS,
                    attempts=1,
                    created_at=utcnow() - timedelta(days=400),
                )
            )
    # When prune runs with batches of 10, a transaction per call
    batches = []
    while True:
        with session_scope() as session:
            deleted = service.prune(session=session, older_than_days=30, batch_size=10)
        if not deleted:
            break
        batches.append(deleted)
    # Then no call deleted more than a batch, and every one of them is gone
    assert batches and max(batches) <= 10
    with session_scope() as session:
        assert session.query(TaskRun).filter(TaskRun.task_id.in_(ids)).count() == 0


def test_a_replay_recorded_after_its_run_already_ended_leaves_the_run_as_it_ended():
    """In the soak a replayed run started, failed and was dead-lettered again (recorded by the recorder) before the
    replay's own transaction committed; that commit marked the run PENDING as of its own time, over the newer
    outcome, and the task's status read PENDING for ever. The run is marked PENDING as of the publish now, and only
    when nothing later is recorded."""
    from datetime import timedelta

    from app.db import utcnow

    task_id = str(uuid.uuid4())
    published_at = utcnow()
    # Given the replayed run's second death already recorded, after the replay's publish
    with session_scope() as session:
        session.add(
            TaskRun(
                task_id=task_id,
                name="system.ping",
                state=TaskState.DEAD_LETTERED,
                attempts=1,
                event_at=published_at + timedelta(milliseconds=100),
            )
        )
    # When the replay's transaction marks it requeued as of the publish
    with session_scope() as session:
        service.mark_requeued(session=session, task_id=task_id, at=published_at)
    # Then the run keeps its later outcome
    with session_scope() as session:
        assert session.get(TaskRun, task_id).state == TaskState.DEAD_LETTERED
    # And a run whose last event is older than the publish is pending again
    with session_scope() as session:
        service.mark_requeued(session=session, task_id=task_id, at=published_at + timedelta(seconds=1))
    with session_scope() as session:
        assert session.get(TaskRun, task_id).state == TaskState.PENDING
