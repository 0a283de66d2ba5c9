"""A revoke meets a task whose start the run history has not recorded yet (the recorder writes it up to a flush
interval later): the start counters in Redis, which every attempt's start check writes, say it is running."""

from __future__ import annotations

import uuid
from typing import Any

from app.constants import TaskState
from app.db import session_scope
from app.engine.guarantees import starts
from app.runs import revocations, status
from app.runs import service as runs_service


def _revoke(task_id: str, stored: dict[str, Any]) -> Any:
    with session_scope() as session:
        return status.revoke(
            session=session,
            task_id=task_id,
            terminate=False,
            revoked_by="admin",
            reason="test",
            result_meta=lambda _: stored,
        )


def _history_state(task_id: str) -> str | None:
    with session_scope() as session:
        run = runs_service.get(session=session, task_id=task_id)
        return run.state if run is not None else None


def test_a_task_that_passed_its_start_check_runs_on_even_before_the_history_shows_it_started():
    # Given an attempt a worker's start check let through, and no start in the history yet
    task_id = str(uuid.uuid4())
    assert starts.check([(task_id, 0)]) == [(False, 1)]
    assert _history_state(task_id) is None
    # When an admin revokes it without terminate, while nothing is stored for it yet
    answer = _revoke(task_id, {"status": TaskState.PENDING})
    # Then the revocation is recorded, and the answer says the task runs on: it is not marked REVOKED
    assert answer.revoked is True and answer.state == TaskState.STARTED and answer.note == status.RUNS_ON
    assert revocations.is_revoked(task_id)
    assert _history_state(task_id) != TaskState.REVOKED
    # And its next attempt would be refused by the start check
    assert starts.check([(task_id, 1)]) == [(True, 1)]


def test_a_task_waiting_for_its_retry_or_never_started_is_marked_revoked():
    # Given one task whose first attempt ended in a retry, and one no worker has started
    waiting, queued = str(uuid.uuid4()), str(uuid.uuid4())
    assert starts.check([(waiting, 0)]) == [(False, 1)]
    # When both are revoked without terminate
    answers = [
        _revoke(waiting, {"status": TaskState.RETRY, "retries": 0}),
        _revoke(queued, {"status": TaskState.PENDING}),
    ]
    # Then both are REVOKED at once, in the answer and the history: neither will run again
    assert [(a.state, a.note) for a in answers] == [(TaskState.REVOKED, None), (TaskState.REVOKED, None)]
    assert [_history_state(task_id) for task_id in (waiting, queued)] == [TaskState.REVOKED, TaskState.REVOKED]


def test_a_later_attempt_that_started_after_a_retry_runs_on():
    # Given a task whose first two attempts ended in retries and whose third passed its start check
    task_id = str(uuid.uuid4())
    assert starts.check([(task_id, 0), (task_id, 1), (task_id, 2)]) == [(False, 1), (False, 1), (False, 1)]
    # When it is revoked without terminate, the worker's last stored word being the second attempt's retry
    answer = _revoke(task_id, {"status": TaskState.RETRY, "retries": 1})
    # Then the third attempt runs on
    assert answer.state == TaskState.STARTED and answer.note == status.RUNS_ON
