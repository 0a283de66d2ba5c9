"""The task-management API: authentication, roles, errors, idempotency, and the read endpoints."""

from __future__ import annotations

import uuid

import pytest

from tests.support.api import auth
from tests.support.session import join

ADMIN_ONLY = [
    ("GET", "/api/v1/tasks/stats"),
    ("GET", "/api/v1/tasks/active"),
    ("GET", "/api/v1/tasks/scheduled"),
    ("GET", "/api/v1/tasks/queues"),
    ("GET", "/api/v1/tasks/workers"),
    ("GET", "/api/v1/tasks/runs"),
    ("POST", "/api/v1/tasks/ping"),
    ("POST", f"/api/v1/tasks/task/{uuid.uuid4()}/revoke"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_a_request_without_a_key_gets_401_with_a_json_error(api, method, path):
    # When a request carries no key, Then it is refused with the error envelope
    response = api.request(method, path, json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_unknown_or_revoked_key_gets_401(api, admin_key):
    # Given a key that never existed, and a real key that is then revoked
    assert api.get("/api/v1/tasks/queues", headers={"Authorization": "Bearer ck_nope"}).status_code == 401
    from app.access import service
    from app.db import session_scope

    with session_scope() as session:
        service.revoke(session=session, name=admin_key[0])
    # Then the revoked key no longer works (API_KEY_CACHE_S is 0 in tests)
    response = api.get("/api/v1/tasks/queues", headers=auth(admin_key))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "The API key is unknown or revoked."


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_a_client_key_on_an_admin_endpoint_gets_403(api, client_key, method, path):
    response = api.request(method, path, json={}, headers=auth(client_key))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_an_unknown_task_id_gets_404_and_a_malformed_one_422(api, admin_key):
    response = api.get(f"/api/v1/tasks/task/{uuid.uuid4()}", headers=auth(admin_key))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = api.get("/api/v1/tasks/task/" + "x" * 65, headers=auth(admin_key))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_invalid_dispatch_input_gets_422_naming_the_field(api, admin_key):
    for body in ({"tier": "urgent"}, {"sleep_s": -1}, {"priority": 11}, {"unknown": 1}, {"tier": "low", "priority": 5}):
        response = api.post("/api/v1/tasks/ping", json=body, headers=auth(admin_key))
        assert response.status_code == 422, body
        assert response.json()["error"]["message"]
    response = api.post(
        "/api/v1/tasks/ping", content=b"{not json", headers={**auth(admin_key), "content-type": "application/json"}
    )
    assert response.status_code == 422


def test_a_client_reads_its_own_task_but_not_another_callers(api, admin_key, client_key):
    # Given a task dispatched by the admin
    task_id = api.post("/api/v1/tasks/ping", json={}, headers=auth(admin_key)).json()["task_id"]
    # Then the admin reads it, and a client is told it does not exist
    assert api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).status_code == 200
    assert api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(client_key)).status_code == 404


def test_a_client_reads_a_task_it_started(api, client_key):
    # Given a task whose meta names the client as its trigger (client-role dispatch arrives with the workflows)
    from app.engine import publish

    dispatched = publish.dispatch("system.ping", kwargs={}, triggered_by=client_key[0])
    # Then the client reads it
    response = api.get(f"/api/v1/tasks/task/{dispatched.task_id}", headers=auth(client_key))
    assert response.status_code == 200
    assert response.json()["triggered_by"] == client_key[0]


def test_the_same_idempotency_key_and_body_return_the_first_answer_and_another_body_is_422(api, admin_key):
    headers = {**auth(admin_key), "Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = api.post("/api/v1/tasks/ping", json={"echo": "once"}, headers=headers)
    again = api.post("/api/v1/tasks/ping", json={"echo": "once"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    other = api.post("/api/v1/tasks/ping", json={"echo": "twice"}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]["message"]


def test_the_read_endpoints_describe_queues_workers_stats_and_schedule(api, admin_key, worker):
    # Given a shared worker on every tier and one finished task
    task_id = api.post("/api/v1/tasks/ping", json={"tier": "low"}, headers=auth(admin_key)).json()["task_id"]
    join(lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS")
    # Then the queues list all four with their consumers
    queues = {q["name"]: q for q in api.get("/api/v1/tasks/queues", headers=auth(admin_key)).json()}
    assert set(queues) == {
        "high",
        "medium",
        "low",
        "dead_letter",
        "dead_letter.archive",
        "delay.high",
        "delay.medium",
        "delay.low",
    }
    assert queues["dead_letter"]["consumers"] == 0
    # And the worker is listed with its queues, concurrency and a fresh heartbeat
    workers = {w["hostname"]: w for w in api.get("/api/v1/tasks/workers", headers=auth(admin_key)).json()}
    assert workers[worker.hostname]["queues"] == ["high", "low", "medium"]
    assert workers[worker.hostname]["concurrency"] == 2
    assert workers[worker.hostname]["heartbeat_age_s"] < 5
    # And stats count the success
    join(lambda: api.get("/api/v1/tasks/stats", headers=auth(admin_key)).json()["counts"].get("SUCCESS"))
    stats = api.get("/api/v1/tasks/stats", headers=auth(admin_key)).json()
    assert stats["workers"] >= 1 and set(stats["queues"]) == set(queues)
    # And the schedule lists the periodic prune
    scheduled = api.get("/api/v1/tasks/scheduled", headers=auth(admin_key)).json()
    assert any(p["task"] == "runs.prune_history" for p in scheduled["periodic"])


def test_active_lists_a_running_task_on_its_worker(api, admin_key, worker):
    task_id = api.post("/api/v1/tasks/ping", json={"sleep_s": 3}, headers=auth(admin_key)).json()["task_id"]

    def running():
        active = api.get("/api/v1/tasks/active", headers=auth(admin_key)).json()
        return next((a for a in active if a["task_id"] == task_id), None)

    found = join(running, what="the task to be active")
    assert found["worker"] == worker.hostname
    assert found["name"] == "system.ping"


def test_revoking_a_finished_task_changes_nothing(api, admin_key, worker):
    task_id = api.post("/api/v1/tasks/ping", json={}, headers=auth(admin_key)).json()["task_id"]
    join(lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS")

    def recorded():
        runs = api.get("/api/v1/tasks/runs", params={"state": "SUCCESS", "limit": 500}, headers=auth(admin_key))
        return any(r["task_id"] == task_id for r in runs.json()["items"])

    join(recorded, what="the run to be recorded")
    response = api.post(f"/api/v1/tasks/task/{task_id}/revoke", json={"terminate": False}, headers=auth(admin_key))
    assert response.status_code == 200
    assert response.json() == {
        "task_id": task_id,
        "revoked": False,
        "terminate": False,
        "state": "SUCCESS",
        "note": None,
    }


def test_revoking_a_running_task_without_terminate_says_it_runs_on_and_its_history_shows_it_succeed(
    api, admin_key, worker
):
    # Given a task the history shows running
    task_id = api.post("/api/v1/tasks/ping", json={"sleep_s": 4, "tier": "low"}, headers=auth(admin_key)).json()[
        "task_id"
    ]

    def run_state() -> str | None:
        runs = api.get("/api/v1/tasks/runs", params={"limit": 500}, headers=auth(admin_key)).json()["items"]
        return next((r["state"] for r in runs if r["task_id"] == task_id), None)

    join(lambda: run_state() == "STARTED", what="the run to be recorded as started")
    # When an admin revokes it without terminate
    response = api.post(f"/api/v1/tasks/task/{task_id}/revoke", json={"terminate": False}, headers=auth(admin_key))
    # Then the answer says the revocation is recorded but the task runs on (it said REVOKED, and stayed so)
    assert response.status_code == 200
    answer = response.json()
    assert answer["revoked"] is True and answer["state"] == "STARTED"
    assert "runs to its end" in answer["note"]
    # And the task ends as it really did, in its status and in the history
    join(
        lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS",
        timeout=30,
        what="the task to succeed",
    )
    join(lambda: run_state() == "SUCCESS", timeout=30, what="the history to show the success")
