"""The embedded SQLite default (DATABASE_URL empty) serves every mutating route at once, each call audited once.

The rest of the suite runs on PostgreSQL; this module starts a real API process (uvicorn) on a migrated SQLite
file, with the session's broker vhost and Redis db. The client's timeout (10 s) is far below SQLite's busy
timeout (30 s): a request that waits for SQLite's write lock fails the test instead of answering late.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import ApiProcess
from tests.support.services import purge_work_queues
from tests.support.session import ROOT

#: Well below SQLite's 30 s busy timeout: a request stuck behind the write lock times out.
CLIENT_TIMEOUT_S = 10.0

#: Migrate, then make an admin and a client key (one process: each start of Python costs seconds here).
SET_UP = """
from alembic import command
from alembic.config import Config
from app.access import service
from app.access.models import Role
from app.db import session_scope
command.upgrade(Config("alembic.ini"), "head")
for name, role in (("sqlite-admin", Role.admin), ("sqlite-client", Role.client)):
    with session_scope() as session:
        print(service.create(session=session, name=name, role=role)[1])
"""

ADD_DEAD_LETTER = """
import uuid
from app.db import session_scope
from app.deadletters.models import DeadLetter, Reason
with session_scope() as session:
    letter = DeadLetter(fingerprint=uuid.uuid4().hex, task_id=str(uuid.uuid4()), task_name="system.ping",
                        reason=Reason.failed, retries=0, death_count=1, replays=0)
    session.add(letter)
    session.flush()
    print(letter.id)
"""


@dataclass
class SqliteApi:
    """A running API process on its own SQLite file, with an admin and a client key."""

    base: str
    database: Path
    log: Path
    admin: str
    client: str

    def call(self, method: str, path: str, key: str | None, **kwargs: Any) -> tuple[httpx.Response, str]:
        """One request with a fresh request id; returns the answer and the id."""
        rid = f"sqlite-{uuid.uuid4().hex[:12]}"
        headers = {"X-Request-ID": rid, **({"Authorization": f"Bearer {key}"} if key else {})}
        response = httpx.request(method, f"{self.base}{path}", headers=headers, timeout=CLIENT_TIMEOUT_S, **kwargs)
        return response, rid

    def entries(self, rid: str) -> list[dict[str, Any]]:
        """The audit entries of one request, read from the SQLite file."""
        with sqlite3.connect(self.database) as db:
            rows = db.execute(
                "SELECT action, outcome, actor, details FROM audit_events WHERE request_id = ? ORDER BY id", (rid,)
            ).fetchall()
        return [{"action": a, "outcome": o, "actor": who, "details": json.loads(d or "null")} for a, o, who, d in rows]

    def audited_once(self, rid: str, action: str, outcome: str = "success") -> dict[str, Any]:
        """The one audit entry of a request, with the action and outcome expected."""
        found = self.entries(rid)
        assert [(e["action"], e["outcome"]) for e in found] == [(action, outcome)], found
        return found[0]


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteApi]:
    """Migrate a fresh SQLite file, make two keys, start uvicorn on it; stop it afterwards."""
    root = tmp_path_factory.mktemp("sqlite-api")
    database = root / "courier.db"
    settings = {"DATABASE_URL": f"sqlite:///{database}", "VAR_DIR": str(root)}
    env = {**os.environ, **settings}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    admin, client = run("-c", SET_UP).split()
    log = root / "api.log"
    api = ApiProcess(settings, log_path=log, ready_path="/openapi.json")
    try:
        api.wait_listening()
        yield SqliteApi(base=api.base, database=database, log=log, admin=admin, client=client)
    finally:
        api.stop()
        purge_work_queues()  # its dispatches name rows of this SQLite file only: no later worker must run them


@pytest.fixture
def user_id(sqlite_api: SqliteApi) -> int:
    """A fresh user with a phone (sign-up is itself a mutating call, audited by its service)."""
    phone = "+4915" + str(uuid.uuid4().int)[:9]
    body = {"email": f"sqlite-{uuid.uuid4().hex[:8]}@example.com", "display_name": "Sky", "phone": phone}
    response, rid = sqlite_api.call("POST", "/api/v1/identity/users", sqlite_api.client, json=body)
    assert response.status_code == 202, response.text
    assert len(sqlite_api.entries(rid)) == 1
    return int(response.json()["user"]["id"])


def test_registering_a_device_answers_at_once_and_is_audited(sqlite_api, user_id):
    # When a device is registered on the SQLite default
    response, rid = sqlite_api.call(
        "POST", f"/api/v1/identity/users/{user_id}/devices", sqlite_api.client, json={"token": uuid.uuid4().hex}
    )
    # Then it answers 201 within the client's timeout, and its audit entry is there
    assert response.status_code == 201, response.text
    entry = sqlite_api.audited_once(rid, "POST /api/v1/identity/users/{user_id}/devices")
    assert entry["actor"] == "sqlite-client" and entry["details"]["status"] == 201


def test_a_webhook_is_created_changed_rotated_and_deleted_each_call_audited(sqlite_api):
    key = sqlite_api.client
    created, rid = sqlite_api.call(
        "POST", "/api/v1/integrations/webhooks", key, json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    )
    assert created.status_code == 201, created.text
    sqlite_api.audited_once(rid, "POST /api/v1/integrations/webhooks")
    endpoint = f"/api/v1/integrations/webhooks/{created.json()['id']}"
    template = "/api/v1/integrations/webhooks/{endpoint_id}"

    changed, rid = sqlite_api.call("PATCH", endpoint, key, json={"description": "changed"})
    assert changed.status_code == 200, changed.text
    sqlite_api.audited_once(rid, f"PATCH {template}")

    rotated, rid = sqlite_api.call("POST", f"{endpoint}/rotate-secret", key)
    assert rotated.status_code == 200, rotated.text
    sqlite_api.audited_once(rid, f"POST {template}/rotate-secret")

    deleted, rid = sqlite_api.call("DELETE", endpoint, key)
    assert deleted.status_code == 204, deleted.text
    sqlite_api.audited_once(rid, f"DELETE {template}")

    missing, rid = sqlite_api.call("DELETE", endpoint, key)
    assert missing.status_code == 404
    sqlite_api.audited_once(rid, f"DELETE {template}", outcome="failure")


def test_revoking_a_task_answers_at_once_and_is_audited(sqlite_api):
    task_id = str(uuid.uuid4())
    response, rid = sqlite_api.call("POST", f"/api/v1/tasks/task/{task_id}/revoke", sqlite_api.admin, json={})
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] is True
    sqlite_api.audited_once(rid, "POST /api/v1/tasks/task/{task_id}/revoke")


def test_pausing_and_resuming_a_tier_are_audited_once_by_their_service(sqlite_api):
    paused, rid = sqlite_api.call("POST", "/api/v1/tasks/queues/low/pause", sqlite_api.admin, json={"reason": "t"})
    try:
        assert paused.status_code == 200, paused.text
        sqlite_api.audited_once(rid, "queue.pause")
    finally:
        resumed, rid = sqlite_api.call("POST", "/api/v1/tasks/queues/low/resume", sqlite_api.admin, json={})
    assert resumed.status_code == 200, resumed.text
    sqlite_api.audited_once(rid, "queue.resume")


def test_an_mfa_challenge_a_notification_and_its_cancel_answer_at_once_and_are_audited(sqlite_api, user_id):
    challenged, rid = sqlite_api.call(
        "POST", "/api/v1/identity/mfa/challenge", sqlite_api.client, json={"user_id": user_id}
    )
    assert challenged.status_code == 202, challenged.text
    assert len(sqlite_api.entries(rid)) == 1

    later = "2999-01-01T00:00:00Z"  # scheduled: no worker sends it before the cancel
    body = {"channel": "sms", "recipient": "+4917" + str(uuid.uuid4().int)[:9], "body": "hi", "send_at": later}
    sent, rid = sqlite_api.call("POST", "/api/v1/notifications", sqlite_api.client, json=body)
    assert sent.status_code == 202, sent.text
    sqlite_api.audited_once(rid, "POST /api/v1/notifications")

    cancelled, rid = sqlite_api.call(
        "POST", f"/api/v1/notifications/{sent.json()['notification_id']}/cancel", sqlite_api.client
    )
    assert cancelled.status_code == 200, cancelled.text
    sqlite_api.audited_once(rid, "POST /api/v1/notifications/{notification_id}/cancel")


def test_registering_a_system_and_discarding_a_dead_letter_are_audited(sqlite_api):
    system, rid = sqlite_api.call(
        "POST",
        "/api/v1/integrations/systems",
        sqlite_api.admin,
        json={"name": f"sys-{uuid.uuid4().hex[:8]}", "base_url": "http://127.0.0.1:9/x"},
    )
    assert system.status_code == 201, system.text
    sqlite_api.audited_once(rid, "POST /api/v1/integrations/systems")

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{sqlite_api.database}", "VAR_DIR": str(sqlite_api.database.parent)}
    made = subprocess.run(
        [sys.executable, "-c", ADD_DEAD_LETTER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    discarded, rid = sqlite_api.call(
        "DELETE", f"/api/v1/tasks/dead-letters/{made.stdout.strip()}", sqlite_api.admin, params={"why": "test"}
    )
    assert discarded.status_code == 200, discarded.text
    sqlite_api.audited_once(rid, "dead_letter.discard")


def test_a_failed_authentication_is_audited(sqlite_api):
    response, rid = sqlite_api.call("POST", "/api/v1/integrations/webhooks", "ck_wrong", json={})
    assert response.status_code == 401
    entry = sqlite_api.audited_once(rid, "auth.failed", outcome="denied")
    assert entry["actor"] == "anonymous"


def test_concurrent_writes_all_answer_and_are_all_audited_and_the_chain_holds(sqlite_api, user_id):
    # Given 32 mutating calls from 8 clients at once: routes on the request's transaction (webhook, device,
    # revoke) and one committing in a session of its own (a scheduled notification)
    calls: list[tuple[str, str, str, dict[str, Any], int]] = [
        (
            "POST",
            "/api/v1/integrations/webhooks",
            sqlite_api.client,
            {"url": "http://127.0.0.1:9/h", "event_types": ["x.y"]},
            201,
        ),
        ("POST", f"/api/v1/identity/users/{user_id}/devices", sqlite_api.client, {"token": "per-call"}, 201),
        ("POST", "/api/v1/tasks/task/{task}/revoke", sqlite_api.admin, {}, 200),
        (
            "POST",
            "/api/v1/notifications",
            sqlite_api.client,
            {"channel": "sms", "recipient": "+491511234567", "body": "b", "send_at": "2999-01-01T00:00:00Z"},
            202,
        ),
    ]

    def one(i: int) -> tuple[int, int, str]:
        method, path, key, body, _ = calls[i % len(calls)]
        body = {**body, "token": uuid.uuid4().hex} if "token" in body else body
        response, rid = sqlite_api.call(method, path.replace("{task}", str(uuid.uuid4())), key, json=body)
        return i, response.status_code, rid

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    # Then every one answered its normal status within the client's timeout and has exactly one entry
    assert [(i, status) for i, status, _ in answers] == [(i, calls[i % len(calls)][4]) for i in range(32)]
    assert all(len(sqlite_api.entries(rid)) == 1 for _, _, rid in answers)
    # And the chain is unbroken, and the API logged no failed audit write or lock wait
    verified, _ = sqlite_api.call("GET", "/api/v1/audit/verify", sqlite_api.admin)
    assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
    log = sqlite_api.log.read_text()
    assert "database is locked" not in log and "Recording the audit entry" not in log
