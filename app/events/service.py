"""Events: record one, and fan it out as one delivery per subscribed, enabled endpoint, in the caller's
transaction; the delivery tasks are published after the commit."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app import dispatch
from app.db import session_scope
from app.errors import ServiceUnavailable
from app.events.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

logger = logging.getLogger(__name__)

#: The events Courier emits itself; clients may not emit these types.
COURIER_EVENTS = frozenset(
    {
        "user.created",
        "password.reset_requested",
        "notification.failed",
        "task.dead_lettered",
        "report.ready",
        "integration.unhealthy",
    }
)
#: `domain.name`, lower case: what an event type (and a subscription) looks like.
EVENT_TYPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
#: Subscribes to every type.
ALL_EVENTS = "*"
DELIVERY_TASK = "integrations.webhook_delivery"


#: A subscription: an event type, `domain.*` (every type under a prefix), or `*`.
SUBSCRIPTION = re.compile(r"^([a-z0-9_]+(\.[a-z0-9_]+)+|[a-z0-9_]+(\.[a-z0-9_]+)*\.\*)$")


def subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    """True when `endpoint` wants events of `event_type` (exactly, by a `prefix.*` pattern, or `*`)."""
    for wanted in endpoint.event_types:
        if wanted in (ALL_EVENTS, event_type) or (wanted.endswith(".*") and event_type.startswith(wanted[:-1])):
            return True
    return False


def emit(session: Session, type: str, data: dict[str, Any], *, source: str = "courier") -> WebhookEvent:  # noqa: A002
    """Record an event and create one delivery per subscribed, enabled endpoint; publish them after commit."""
    event = WebhookEvent(event_id=f"evt_{uuid.uuid4().hex}", type=type, data=data, source=source)
    session.add(event)
    session.flush()
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True)))
    deliveries = [
        WebhookDelivery(message_id=f"msg_{uuid.uuid4().hex}", endpoint_id=endpoint.id, event_id=event.id)
        for endpoint in endpoints
        if subscribed(endpoint, type)
    ]
    session.add_all(deliveries)
    session.flush()
    publish_after_commit(session, [d.id for d in deliveries])
    logger.info("Event %s (%s) fans out to %d endpoint(s).", event.event_id, type, len(deliveries))
    return event


def delivery_count(session: Session, event: WebhookEvent) -> int:
    """How many deliveries an event fanned out to."""
    return session.scalar(select(func.count()).where(WebhookDelivery.event_id == event.id)) or 0


def publish_after_commit(session: Session, delivery_ids: list[int]) -> None:
    """Publish a delivery task for each id once `session` commits."""
    if delivery_ids:
        dispatch.after_commit(session, lambda: _publish_quietly(delivery_ids))


def _publish_quietly(delivery_ids: list[int]) -> None:
    publish_deliveries(delivery_ids)


def publish_deliveries(delivery_ids: list[int]) -> int:
    """Publish one delivery task per id and note its task id; returns how many were published.

    A failed publish leaves the delivery without a task id; the sweeper publishes it later.
    """
    published: dict[int, str] = {}
    for delivery_id in delivery_ids:
        try:
            task_id = dispatch.enqueue(DELIVERY_TASK, kwargs={"delivery_id": delivery_id}, triggered_by="events")
        except ServiceUnavailable:
            # The publisher logs the outage once; the sweeper (integrations.dispatch_pending) publishes it later.
            logger.debug("Publishing delivery %s failed; the sweeper will retry it.", delivery_id)
            continue
        published[delivery_id] = task_id
    if published:
        with session_scope() as session:
            for delivery_id, task_id in published.items():
                session.execute(
                    update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(task_id=task_id)
                )
    return len(published)
