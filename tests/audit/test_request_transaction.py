"""One transaction per request, carrying its audit entry, committed before the response starts (PostgreSQL).

An observer wraps the real application at the ASGI boundary and, the moment the status line goes out, looks at
the database from a connection of its own: what a client that got the status could already read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.api import auth
from tests.support.services import DATABASE_URL

DSN = DATABASE_URL


class StatusLineObserver:
    """Runs `look()` when the application sends `http.response.start`, before passing it on."""

    def __init__(self, app: ASGIApp, look: Callable[[Scope], Any]) -> None:
        self.app = app
        self.look = look
        self.seen: list[tuple[int, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((int(message["status"]), self.look(scope)))
            await send(message)

        await self.app(scope, receive, observed)


def _rid(scope: Scope) -> str:
    return dict(scope["headers"])[b"x-request-id"].decode()


def _committed(scope: Scope) -> dict[str, Any]:
    """The committed webhook of this request (by its description) and audit entry (by request id), with xmin."""
    rid = _rid(scope)
    with psycopg.connect(DSN, autocommit=True) as conn:
        endpoint = conn.execute("SELECT xmin::text FROM webhook_endpoints WHERE description = %s", (rid,)).fetchone()
        entry = conn.execute("SELECT xmin::text, action FROM audit_events WHERE request_id = %s", (rid,)).fetchall()
    return {"endpoint": endpoint[0] if endpoint else None, "entries": entry}


@pytest.fixture
def observed() -> Iterator[tuple[TestClient, StatusLineObserver]]:
    from app.main import app

    observer = StatusLineObserver(app, _committed)
    with TestClient(observer, raise_server_exceptions=False) as client:
        yield client, observer


def test_the_change_and_its_audit_entry_commit_in_one_transaction_before_the_status_line(observed, client_key):
    client, observer = observed
    rid = f"txn-{uuid.uuid4().hex[:12]}"
    # When a webhook endpoint is created
    response = client.post(
        "/api/v1/integrations/webhooks",
        # (disabled, and subscribed to nothing that is emitted: later tests count deliveries)
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["none.ever"], "enabled": False, "description": rid},
        headers={**auth(client_key), "X-Request-ID": rid},
    )
    assert response.status_code == 201, response.text
    # Then, as its status line went out, the endpoint and its audit entry were committed, by the same transaction
    [(status, seen)] = observer.seen
    assert status == 201
    assert seen["endpoint"] is not None, "the 201 went out before the endpoint was committed"
    assert seen["entries"] == [(seen["endpoint"], "POST /api/v1/integrations/webhooks")]


@pytest.fixture
def commit_refused() -> Iterator[str]:
    """A deferred constraint trigger: PostgreSQL refuses, at COMMIT, any transaction that registers a system whose
    name starts with the returned prefix (the insert itself succeeds)."""
    prefix = f"refused-{uuid.uuid4().hex[:6]}"
    function, trigger = f"courier_test_refuse_{prefix[-6:]}", f"courier_test_refuse_{prefix[-6:]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.name LIKE '{prefix}%' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON integrations DEFERRABLE INITIALLY DEFERRED "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
    try:
        yield prefix
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON integrations")
            conn.execute(f"DROP FUNCTION IF EXISTS {function}()")


def test_a_change_whose_commit_fails_is_answered_503_and_recorded_as_a_failure(api, admin_key, commit_refused):
    rid = f"txn-{uuid.uuid4().hex[:12]}"
    name = f"{commit_refused}-{rid}"
    # When a change is made whose transaction the database refuses at commit
    response = api.post(
        "/api/v1/integrations/systems",
        json={"name": name, "base_url": "http://127.0.0.1:9/x"},
        headers={**auth(admin_key), "X-Request-ID": rid},
    )
    # Then the client is told nothing was saved (not 201 for a row that does not exist), and may retry
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"] == "1"
    with psycopg.connect(DSN, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM integrations WHERE name = %s", (name,)).fetchone() == (0,)
        entries = conn.execute(
            "SELECT action, outcome, details->>'status' FROM audit_events WHERE request_id = %s", (rid,)
        ).fetchall()
    # And the failure has its audit entry (the success entry rolled back with the change)
    assert entries == [("POST /api/v1/integrations/systems", "failure", "503")]
