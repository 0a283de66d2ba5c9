"""Pausing a tier holds its messages until it is resumed, across a worker restart; purging needs a token."""

from __future__ import annotations

from sqlalchemy import select

from app.audit.models import AuditEvent
from app.db import session_scope
from tests.support.api import auth, dispatch
from tests.support.services import queue_depth
from tests.support.session import join


def audited(action: str, target: str) -> list[AuditEvent]:
    with session_scope() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action, AuditEvent.target == target)))


def test_a_paused_tier_keeps_its_messages_across_a_worker_restart_until_resumed(
    api, start_worker, recorder, admin_key, empty_queues
):
    # Given a worker on the low tier, and the tier paused by an admin
    worker = start_worker("low")
    paused = api.post("/api/v1/tasks/queues/low/pause", json={"reason": "maintenance"}, headers=auth(admin_key))
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"queue": "low", "paused": True, "workers": [worker.hostname]}
    join(lambda: queue_depth("low")["consumers"] == 0, what="the worker to stop consuming low")
    # When tasks are dispatched to it
    ids = [dispatch(api, admin_key, tier="low") for _ in range(3)]
    # Then they wait in the queue, also after the worker restarts
    assert queue_depth("low")["ready"] == 3
    worker.stop()
    worker = start_worker("low")
    assert queue_depth("low") == {"ready": 3, "consumers": 0}
    listed = api.get("/api/v1/tasks/queues/paused", headers=auth(admin_key)).json()
    assert [(p["queue"], p["reason"]) for p in listed] == [("low", "maintenance")]
    # When the tier is resumed
    resumed = api.post("/api/v1/tasks/queues/low/resume", headers=auth(admin_key))
    assert resumed.json() == {"queue": "low", "paused": False, "workers": [worker.hostname]}
    # Then every held task runs
    for task_id in ids:
        join(
            lambda t=task_id: api.get(f"/api/v1/tasks/task/{t}", headers=auth(admin_key)).json()["state"] == "SUCCESS",
            what=f"task {task_id} to run after the resume",
        )
    # And both actions are in the audit trail
    assert len(audited("queue.pause", "queue:low")) >= 1
    assert len(audited("queue.resume", "queue:low")) >= 1


def test_pausing_needs_an_admin_and_a_real_tier(api, client_key, admin_key):
    assert api.post("/api/v1/tasks/queues/low/pause", headers=auth(client_key)).status_code == 403
    response = api.post("/api/v1/tasks/queues/nope/pause", headers=auth(admin_key))
    assert response.status_code == 422
    assert "high, medium, low" in response.json()["error"]["message"]


def test_a_purge_drops_the_messages_only_with_the_confirmation_token_and_is_audited(api, admin_key, empty_queues):
    # Given three messages waiting on the high tier (no worker runs in this test)
    for _ in range(3):
        dispatch(api, admin_key, tier="high")
    assert queue_depth("high")["ready"] == 3
    # When an admin asks to purge it without a token
    first = api.post("/api/v1/tasks/queues/high/purge", json={}, headers=auth(admin_key))
    # Then nothing is dropped; the answer says how many would be, with a token
    assert first.status_code == 409
    details = first.json()["error"]["details"]
    assert details["messages"] == 3 and details["queue"] == "high"
    assert queue_depth("high")["ready"] == 3
    # And a wrong token is refused
    wrong = api.post("/api/v1/tasks/queues/high/purge", json={"confirm_token": "x"}, headers=auth(admin_key))
    assert wrong.status_code == 409 and queue_depth("high")["ready"] == 3
    # When the admin repeats it with the token
    done = api.post(
        "/api/v1/tasks/queues/high/purge",
        json={"confirm_token": details["confirm_token"], "reason": "test"},
        headers=auth(admin_key),
    )
    # Then the queue is empty, the purge audited, and the token spent
    assert done.json() == {"queue": "high", "purged": 3}
    assert queue_depth("high")["ready"] == 0
    events = audited("queue.purge", "queue:high")
    assert events and events[-1].details == {"purged": 3} and events[-1].actor == admin_key[0]
    again = api.post(
        "/api/v1/tasks/queues/high/purge", json={"confirm_token": details["confirm_token"]}, headers=auth(admin_key)
    )
    assert again.status_code == 409
