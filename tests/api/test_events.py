"""Live progress over Server-Sent Events: increasing progress, then the final state; clients see only their own."""

from __future__ import annotations

from app.engine import publish
from tests.support.api import auth, read_events


def test_a_task_reporting_progress_streams_increasing_progress_and_ends_with_its_final_state(api, worker, client_key):
    # Given a task of this client's that reports four steps of progress, about one second apart
    task_id = publish.dispatch("system.ping", kwargs={"sleep_s": 4.0, "steps": 4}, triggered_by=client_key[0]).task_id
    # When the client follows its events
    events = read_events(api, client_key, task_id)
    # Then progress climbs (never backwards) to 4/4, and the stream ends with SUCCESS
    progress = [e["progress"]["current"] for name, e in events if name == "state" and e.get("progress")]
    assert len(set(progress)) >= 2, events
    assert progress == sorted(progress) and progress[-1] <= 4
    assert all(e["progress"]["total"] == 4 for name, e in events if name == "state" and e.get("progress"))
    states = [e["state"] for name, e in events if name == "state"]
    assert states[-1] == "SUCCESS" and events[-2][1]["result"]["pong"] is True
    assert events[-1] == ("end", {"task_id": task_id, "state": "SUCCESS"})


def test_a_client_cannot_follow_another_callers_task(api, worker, client_key, admin_key):
    # Given a task dispatched by an admin
    task_id = publish.dispatch("system.ping", kwargs={}, triggered_by=admin_key[0]).task_id
    # When a client asks for its events, Then it is not found (as with GET /task/{id})
    response = api.get(f"/api/v1/tasks/task/{task_id}/events", headers=auth(client_key))
    assert response.status_code == 404
    assert response.json()["error"]["code"]
    # And the admin can follow it to its end
    assert read_events(api, admin_key, task_id)[-1][0] == "end"
