"""The HTTP audit and the audit API: every mutating call is recorded once with who, what, where from and how it
ended; failed authentications too; entries are listed with filters, admins only."""

from __future__ import annotations

import uuid
from typing import Any

from app.db import session_scope
from app.deadletters.models import DeadLetter, Reason
from tests.support.api import auth


def entries(api: Any, key: tuple[str, str], **params: Any) -> list[dict[str, Any]]:
    response = api.get("/api/v1/audit/events", params={"limit": 500, **params}, headers=auth(key))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def by_request(api: Any, key: tuple[str, str], request_id: str) -> list[dict[str, Any]]:
    return [e for e in entries(api, key) if e["request_id"] == request_id]


def test_a_mutating_call_is_recorded_once_with_actor_request_id_address_and_outcome(api, admin_key):
    rid = f"req-{uuid.uuid4().hex[:8]}"
    response = api.post(
        "/api/v1/integrations/systems",
        json={"name": f"sys-{rid}", "base_url": "http://127.0.0.1:9/x"},
        headers={**auth(admin_key), "X-Request-ID": rid},
    )
    assert response.status_code == 201
    [entry] = by_request(api, admin_key, rid)
    assert entry["actor"] == admin_key[0] and entry["role"] == "admin"
    assert entry["action"] == "POST /api/v1/integrations/systems"
    assert entry["target"] == "/api/v1/integrations/systems"
    assert entry["outcome"] == "success"
    assert entry["client_address"] == "testclient"
    assert entry["details"]["status"] == 201


def test_a_refused_change_is_recorded_as_a_failure_and_reads_are_not_recorded(api, admin_key):
    rid = f"req-{uuid.uuid4().hex[:8]}"
    missing = api.patch(
        "/api/v1/integrations/webhooks/999999",
        json={"enabled": False},
        headers={**auth(admin_key), "X-Request-ID": rid},
    )
    assert missing.status_code == 404
    [entry] = by_request(api, admin_key, rid)
    assert entry["outcome"] == "failure" and entry["details"]["status"] == 404
    assert entry["action"] == "PATCH /api/v1/integrations/webhooks/{endpoint_id}"
    read_rid = f"req-{uuid.uuid4().hex[:8]}"
    api.get("/api/v1/integrations/webhooks", headers={**auth(admin_key), "X-Request-ID": read_rid})
    assert by_request(api, admin_key, read_rid) == []


def test_failed_authentications_are_recorded(api, admin_key):
    rid = f"req-{uuid.uuid4().hex[:8]}"
    response = api.get("/api/v1/tasks/runs", headers={"Authorization": "Bearer ck_wrong", "X-Request-ID": rid})
    assert response.status_code == 401
    [entry] = by_request(api, admin_key, rid)
    assert entry["action"] == "auth.failed" and entry["actor"] == "anonymous" and entry["outcome"] == "denied"


def test_an_action_its_service_records_is_not_recorded_twice(api, admin_key):
    # Given a dead letter (recorded directly: the failure matrix tests make real ones)
    with session_scope() as session:
        letter = DeadLetter(
            fingerprint=uuid.uuid4().hex,
            task_id=str(uuid.uuid4()),
            task_name="system.ping",
            reason=Reason.failed,
            retries=0,
            death_count=1,
            replays=0,
        )
        session.add(letter)
        session.flush()
        letter_id = letter.id
    rid = f"req-{uuid.uuid4().hex[:8]}"
    # When an admin discards it (the dead-letter service records the discard itself)
    response = api.delete(
        f"/api/v1/tasks/dead-letters/{letter_id}",
        params={"why": "test"},
        headers={**auth(admin_key), "X-Request-ID": rid},
    )
    assert response.status_code == 200, response.text
    # Then there is exactly one entry for the call: the service's, with the request's id and address
    [entry] = by_request(api, admin_key, rid)
    assert entry["action"] == "dead_letter.discard" and entry["reason"] == "test"
    assert entry["client_address"] == "testclient"


def test_the_probe_is_exempt(api, admin_key):
    rid = f"req-{uuid.uuid4().hex[:8]}"
    api.post("/api/v1/tasks/ping", json={}, headers={**auth(admin_key), "X-Request-ID": rid})
    assert by_request(api, admin_key, rid) == []


def test_events_are_filtered_and_paginated_for_admins_only(api, admin_key, client_key):
    for _ in range(3):
        api.post(
            "/api/v1/integrations/events", json={"type": "audit.filter_test", "data": {}}, headers=auth(client_key)
        )
    page = api.get(
        "/api/v1/audit/events",
        params={"actor": client_key[0], "action": "POST /api/v1/integrations/*", "limit": 2},
        headers=auth(admin_key),
    ).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["id"] > page["items"][1]["id"]
    rest = api.get(
        "/api/v1/audit/events", params={"actor": client_key[0], "limit": 2, "offset": 2}, headers=auth(admin_key)
    ).json()
    assert len(rest["items"]) == 1
    assert api.get("/api/v1/audit/events", headers=auth(client_key)).status_code == 403
    bad = api.get("/api/v1/audit/events", params={"since": "yesterday"}, headers=auth(admin_key))
    assert bad.status_code == 422


def test_the_verify_endpoint_reports_a_healthy_chain(api, admin_key):
    body = api.get("/api/v1/audit/verify", headers=auth(admin_key)).json()
    assert body["ok"] is True and body["checked"] > 0 and body["first_broken_id"] is None
