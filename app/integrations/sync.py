"""External systems: register them, pull their records page by page (cursor saved per page, idempotent
upserts), and health-check them, emitting `integration.unhealthy` when one turns unhealthy."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope, utcnow
from app.events import service as events
from app.integrations import egress
from app.integrations.exceptions import DuplicateIntegration, EgressRefused, IntegrationNotFound
from app.integrations.models import ExternalRecord, Integration

logger = logging.getLogger(__name__)


class SyncTransient(Exception):
    """A page failed in a way worth retrying (timeout, connection, 408/429/5xx); the cursor is kept."""


class SyncPermanent(Exception):
    """A page failed in a way no retry fixes (refused URL, other 4xx, a body that is not a page)."""


def create(*, session: Session, name: str, base_url: str, settings: Settings, enabled: bool = True) -> Integration:
    """Register an external system (its URL must pass the egress check)."""
    if session.scalar(select(Integration.id).where(Integration.name == name)) is not None:
        raise DuplicateIntegration(name)
    egress.resolve(base_url, settings)
    integration = Integration(name=name, base_url=base_url, enabled=enabled, records_synced=0, health="unknown")
    session.add(integration)
    session.flush()
    return integration


def get(*, session: Session, integration_id: int) -> Integration:
    """One integration; IntegrationNotFound otherwise."""
    integration = session.get(Integration, integration_id)
    if integration is None:
        raise IntegrationNotFound(integration_id)
    return integration


def list_integrations(*, session: Session, enabled_only: bool = False) -> list[Integration]:
    """Every integration (or only the enabled ones), oldest first."""
    query = select(Integration).order_by(Integration.id)
    if enabled_only:
        query = query.where(Integration.enabled.is_(True))
    return list(session.scalars(query))


@dataclass(frozen=True)
class Page:
    """One page of an external system: its records and the cursor of the next page (None at the end)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def fetch_page(url: str, cursor: str | None, settings: Settings) -> Page:
    """GET `url?cursor=..&limit=..`, expecting `{"items": [{"id": ..}, ..], "next_cursor": ..}`."""
    params: dict[str, Any] = {"limit": settings.integration_page_size}
    if cursor:
        params["cursor"] = cursor
    try:
        with egress.client(settings.integration_timeout_s) as http:
            response = egress.request(
                http,
                "GET",
                url,
                settings,
                max_bytes=settings.integration_response_max_bytes,
                params=params,
                headers={"accept": "application/json"},
            )
    except EgressRefused as exc:
        raise SyncPermanent(exc.message) from exc
    except httpx.HTTPError as exc:
        raise SyncTransient(f"{type(exc).__name__}: {exc}") from exc
    code = response.status_code
    if code in (408, 429) or code >= 500:
        raise SyncTransient(f"the system answered {code}")
    if not 200 <= code < 300:
        raise SyncPermanent(f"the system answered {code}")
    if response.truncated:
        raise SyncPermanent(f"the page is larger than INTEGRATION_RESPONSE_MAX_BYTES ({len(response.body)} bytes)")
    try:
        body = json.loads(response.body)
        items, next_cursor = body["items"], body.get("next_cursor")
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
            raise ValueError("items must be a list of objects with an id")
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncPermanent(f"the page is not {{items, next_cursor}}: {exc}") from exc
    return Page(items, str(next_cursor) if next_cursor not in (None, "") else None)


def upsert(*, session: Session, integration_id: int, items: list[dict[str, Any]]) -> None:
    """Insert or update records by (integration, external id): rerunning a page changes nothing."""
    if not items:
        return
    rows = [
        {"integration_id": integration_id, "external_id": str(item["id"]), "data": item, "synced_at": utcnow()}
        for item in {str(i["id"]): i for i in items}.values()
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ExternalRecord).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["integration_id", "external_id"],
        set_={"data": statement.excluded.data, "synced_at": statement.excluded.synced_at},
    )
    session.execute(statement)


def sync(*, integration_id: int, settings: Settings, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Pull every page from the saved cursor on; each page's records and the next cursor commit together.

    Raises SyncTransient (retry: the next run resumes at the saved cursor) or SyncPermanent.
    """
    pages = records = 0
    while True:
        with session_scope() as session:
            integration = get(session=session, integration_id=integration_id)
            if not integration.enabled:
                return {"integration_id": integration_id, "skipped": "disabled"}
            url, cursor = integration.base_url, integration.cursor
        try:
            page = fetch_page(url, cursor, settings)
        except (SyncTransient, SyncPermanent) as exc:
            with session_scope() as session:
                get(session=session, integration_id=integration_id).sync_error = str(exc)[:500]
            raise
        with session_scope() as session:
            upsert(session=session, integration_id=integration_id, items=page.items)
            integration = get(session=session, integration_id=integration_id)
            integration.cursor = page.next_cursor
            integration.records_synced += len(page.items)
            integration.sync_error = None
            if page.next_cursor is None:
                integration.last_synced_at = utcnow()
        pages += 1
        records += len(page.items)
        if progress is not None:
            progress(pages)
        if page.next_cursor is None:
            logger.info("Synced integration %s: %d page(s), %d record(s).", integration_id, pages, records)
            return {"integration_id": integration_id, "pages": pages, "records": records}


def health_check(*, integration_id: int, settings: Settings) -> dict[str, Any]:
    """Probe one system (a one-record page); record status and latency; emit `integration.unhealthy` when it
    turns unhealthy."""
    with session_scope() as session:
        url = get(session=session, integration_id=integration_id).base_url
    code: int | None = None
    latency: int | None = None
    error: str | None = None
    try:
        with egress.client(settings.integration_timeout_s) as http:
            response = egress.request(http, "GET", url, settings, max_bytes=4096, params={"limit": 1})
        code, latency = response.status_code, response.latency_ms
    except EgressRefused as exc:
        error = exc.message
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    health = "healthy" if code is not None and 200 <= code < 300 else "unhealthy"
    with session_scope() as session:
        integration = get(session=session, integration_id=integration_id)
        before = integration.health
        integration.health = health
        integration.last_checked_at = utcnow()
        integration.last_latency_ms = latency
        integration.last_status_code = code
        if health == "unhealthy" and before != "unhealthy":
            events.emit(
                session,
                "integration.unhealthy",
                {
                    "kind": "external_system",
                    "integration_id": integration_id,
                    "name": integration.name,
                    "status_code": code,
                    "error": error,
                },
            )
    return {
        "integration_id": integration_id,
        "health": health,
        "status_code": code,
        "latency_ms": latency,
        "error": error,
    }
