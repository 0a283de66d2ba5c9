"""Integration tasks: webhook delivery (and its sweeper), external-system sync, health checks."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from app.config import get_settings
from app.db import session_scope, utcnow
from app.engine import publish
from app.engine.task import CourierTask, PermanentError, TransientError, courier_task
from app.events import service as events
from app.events.models import DeliveryStatus, WebhookDelivery
from app.integrations import sync, webhooks

logger = logging.getLogger(__name__)

#: A pending delivery without a task for this long lost its after-commit publish; the sweeper publishes it.
ORPHAN_AFTER_S = 30


@courier_task("integrations.webhook_delivery")
def webhook_delivery(self: CourierTask, *, delivery_id: int) -> dict[str, Any]:
    """One attempt of a signed delivery; retried with backoff (or Retry-After) until WEBHOOK_MAX_ATTEMPTS."""
    settings = get_settings()
    outcome = webhooks.deliver(delivery_id=delivery_id, settings=settings)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=settings.webhook_max_attempts + 1)
    return outcome.as_dict()


@courier_task("integrations.dispatch_pending")
def dispatch_pending(self: CourierTask) -> dict[str, int]:
    """Publish pending deliveries left without a task (their after-commit publish was lost)."""
    cutoff = utcnow() - timedelta(seconds=ORPHAN_AFTER_S)
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.status == DeliveryStatus.pending, WebhookDelivery.task_id.is_(None))
                .where(WebhookDelivery.created_at < cutoff)
                .order_by(WebhookDelivery.id)
                .limit(1000)
            )
        )
    return {"published": events.publish_deliveries(ids)}


@courier_task("integrations.sync_external_system")
def sync_external_system(self: CourierTask, *, integration_id: int) -> dict[str, Any]:
    """Pull an external system's records from its saved cursor on; a failure resumes there on retry."""

    def progress(pages: int) -> None:
        self.update_state(state="PROGRESS", meta={"current": pages, "total": None})

    try:
        return sync.sync(integration_id=integration_id, settings=get_settings(), progress=progress)
    except sync.SyncTransient as exc:
        raise TransientError(f"sync of integration {integration_id}: {exc}") from exc
    except sync.SyncPermanent as exc:
        raise PermanentError(f"sync of integration {integration_id}: {exc}") from exc


@courier_task("integrations.sync_all_systems")
def sync_all_systems(self: CourierTask) -> dict[str, Any]:
    """One sync task per enabled integration."""
    with session_scope() as session:
        ids = [i.id for i in sync.list_integrations(session=session, enabled_only=True)]
    task_ids = [
        publish.dispatch(
            "integrations.sync_external_system", kwargs={"integration_id": i}, triggered_by="sync_all_systems"
        ).task_id
        for i in ids
    ]
    return {"dispatched": len(task_ids), "task_ids": task_ids}


@courier_task("integrations.health_check_integrations")
def health_check_integrations(self: CourierTask) -> dict[str, Any]:
    """Probe every enabled integration; record latency and status; emit `integration.unhealthy` on a change."""
    settings = get_settings()
    with session_scope() as session:
        ids = [i.id for i in sync.list_integrations(session=session, enabled_only=True)]
    results = [sync.health_check(integration_id=i, settings=settings) for i in ids]
    return {"checked": len(results), "unhealthy": sum(1 for r in results if r["health"] == "unhealthy")}
