"""External systems: a sync from a local paginated server survives a failure mid-way and resumes from its cursor;
health checks record status and latency and emit `integration.unhealthy` once per change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.config import get_settings
from app.db import session_scope
from app.events.models import WebhookEvent
from app.integrations import sync
from app.integrations.models import ExternalRecord
from tests.support.api import auth
from tests.support.receiver import Answer, Received, as_json
from tests.support.session import join

PAGES = {
    None: ({"items": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], "next_cursor": "c2"}),
    "c2": ({"items": [{"id": 3, "v": "c"}, {"id": 4, "v": "d"}], "next_cursor": "c3"}),
    "c3": ({"items": [{"id": 5, "v": "e"}], "next_cursor": None}),
}


def paginated(fail_once_at: str | None) -> Any:
    """A handler serving PAGES by cursor; the page at `fail_once_at` fails with 503 the first time."""
    failed: set[str] = set()

    def handle(request: Received) -> Answer:
        cursor = request.query.get("cursor", [None])[0]
        if cursor == fail_once_at and cursor not in failed:
            failed.add(cursor)
            return 503, {}, b"try later"
        return 200, {"content-type": "application/json"}, as_json(PAGES[cursor])

    return handle


def test_a_sync_that_fails_mid_way_resumes_from_its_cursor(api, admin_key, worker, receiver):
    # Given a paginated system whose third page fails once
    server = receiver(handler=paginated(fail_once_at="c3"))
    created = api.post(
        "/api/v1/integrations/systems",
        json={"name": "crm-resume", "base_url": server.url + "/records"},
        headers=auth(admin_key),
    )
    assert created.status_code == 201, created.text
    system = created.json()
    # When a sync runs (the task retries the transient failure)
    started = api.post(f"/api/v1/integrations/systems/{system['id']}/sync", headers=auth(admin_key))
    assert started.status_code == 202
    task_url = started.json()["status_url"]
    join(lambda: api.get(task_url, headers=auth(admin_key)).json()["state"] == "SUCCESS", timeout=60, what="sync")
    # Then every record is there once, and the pages before the failure were not fetched again
    cursors = [r.query.get("cursor", [None])[0] for r in server.received]
    assert cursors == [None, "c2", "c3", "c3"]
    with session_scope() as session:
        rows = session.scalars(select(ExternalRecord).where(ExternalRecord.integration_id == system["id"])).all()
        assert sorted(r.external_id for r in rows) == ["1", "2", "3", "4", "5"]
    found = api.get(f"/api/v1/integrations/systems/{system['id']}", headers=auth(admin_key)).json()
    assert found["cursor"] is None and found["last_synced_at"] and found["sync_error"] is None
    # And a second full sync upserts: still five records
    sync.sync(integration_id=system["id"], settings=get_settings())
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(ExternalRecord).where(ExternalRecord.integration_id == system["id"])
        )
    assert count == 5


def test_a_page_that_is_not_a_page_fails_permanently_and_keeps_the_cursor(receiver):
    server = receiver(script=[(200, {}, as_json(PAGES[None])), (200, {}, b"<html>")])
    with session_scope() as session:
        integration_id = sync.create(session=session, name="broken", base_url=server.url, settings=get_settings()).id
    try:
        sync.sync(integration_id=integration_id, settings=get_settings())
    except sync.SyncPermanent as exc:
        assert "not {items, next_cursor}" in str(exc)
    else:
        raise AssertionError("the sync should have failed")
    with session_scope() as session:
        integration = sync.get(session=session, integration_id=integration_id)
        assert integration.cursor == "c2" and integration.records_synced == 2


def test_health_checks_record_latency_and_emit_unhealthy_once_per_change(receiver):
    server = receiver(script=[(200, {}, b"{}")])
    with session_scope() as session:
        integration_id = sync.create(session=session, name="erp", base_url=server.url, settings=get_settings()).id

    def unhealthy_events() -> int:
        with session_scope() as session:
            found = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "integration.unhealthy")).all()
            return sum(1 for e in found if e.data.get("integration_id") == integration_id)

    first = sync.health_check(integration_id=integration_id, settings=get_settings())
    assert first["health"] == "healthy" and first["latency_ms"] is not None
    server.script = [(503, {}, b"down")]
    server.received.clear()
    assert sync.health_check(integration_id=integration_id, settings=get_settings())["health"] == "unhealthy"
    assert sync.health_check(integration_id=integration_id, settings=get_settings())["status_code"] == 503
    assert unhealthy_events() == 1
    server.stop()
    assert sync.health_check(integration_id=integration_id, settings=get_settings())["error"]
    assert unhealthy_events() == 1
