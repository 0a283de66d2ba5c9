"""Webhook endpoints (create, update, rotate the secret, delete), the delivery log, redelivery and recovery, and
one delivery attempt with its outcome: success, retry (with backoff or Retry-After), or failure."""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from sqlalchemy import Text, func, select
from sqlalchemy import column as sa_column
from sqlalchemy import delete as sa_delete
from sqlalchemy import table as sa_table
from sqlalchemy.orm import Session

from app import crypto
from app.access.schemas import Principal
from app.audit import service as audit_service
from app.config import Settings
from app.db import session_scope, utcnow
from app.events import service as events
from app.events.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.identity.models import User
from app.integrations import egress, signing
from app.integrations.exceptions import DeliveryNotFound, EgressRefused, EndpointDisabled, EndpointNotFound
from app.integrations.models import WebhookAttempt
from app.notifications import service as notifications

logger = logging.getLogger(__name__)

#: Characters of a response body kept in the attempt log.
EXCERPT_CHARS = 1000
#: Statuses worth retrying (besides 5xx and 3xx, which are failures too).
RETRYABLE = frozenset({408, 429})


def create(
    *,
    session: Session,
    url: str,
    event_types: list[str],
    owner: str,
    settings: Settings,
    description: str | None = None,
    owner_user_id: int | None = None,
    enabled: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint (its URL must pass the egress check); returns it and its secret, shown once."""
    egress.resolve(url, settings)
    secret = signing.generate_secret()
    endpoint = WebhookEndpoint(
        url=url,
        event_types=sorted(set(event_types)),
        description=description,
        enabled=enabled,
        owner=owner,
        owner_user_id=owner_user_id,
        secret=secret,
        consecutive_failures=0,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get(*, session: Session, endpoint_id: int) -> WebhookEndpoint:
    """One endpoint; EndpointNotFound otherwise."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise EndpointNotFound(endpoint_id)
    return endpoint


def list_endpoints(*, session: Session) -> list[WebhookEndpoint]:
    """Every endpoint, oldest first."""
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)))


def update(*, session: Session, endpoint_id: int, changes: dict[str, Any], settings: Settings) -> WebhookEndpoint:
    """Change url, event types, description or enabled; enabling resets the failure count."""
    endpoint = get(session=session, endpoint_id=endpoint_id)
    if "url" in changes and changes["url"] is not None:
        egress.resolve(changes["url"], settings)
        endpoint.url = changes["url"]
    if changes.get("event_types") is not None:
        endpoint.event_types = sorted(set(changes["event_types"]))
    if "description" in changes:
        endpoint.description = changes["description"]
    if changes.get("enabled") is not None:
        if changes["enabled"] and not endpoint.enabled:
            endpoint.consecutive_failures = 0
            endpoint.disabled_reason = None
        elif not changes["enabled"]:
            endpoint.disabled_reason = "disabled by its owner"
        endpoint.enabled = changes["enabled"]
    session.flush()
    return endpoint


def rotate_secret(*, session: Session, endpoint_id: int, settings: Settings) -> tuple[WebhookEndpoint, str]:
    """A new secret; the previous one keeps signing (a second signature) for WEBHOOK_SECRET_GRACE_S."""
    endpoint = get(session=session, endpoint_id=endpoint_id)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = utcnow() + timedelta(seconds=settings.webhook_secret_grace_s)
    endpoint.secret = signing.generate_secret()
    session.flush()
    return endpoint, endpoint.secret


def delete(*, session: Session, endpoint_id: int) -> None:
    """Remove an endpoint with its deliveries and their attempts."""
    endpoint = get(session=session, endpoint_id=endpoint_id)
    of_endpoint = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
    session.execute(sa_delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(of_endpoint)))
    session.execute(sa_delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    session.delete(endpoint)
    session.flush()


def reencrypt_secrets(*, session: Session) -> int:
    """Rewrite every stored signing secret under the first DATA_ENCRYPTION_KEYS key (a key rotation's second
    step); returns how many endpoints were rewritten. It works on the stored tokens, never on the secrets."""
    raw = sa_table(
        WebhookEndpoint.__tablename__, sa_column("id"), sa_column("secret", Text), sa_column("previous_secret", Text)
    )
    rows = session.execute(select(raw.c.id, raw.c.secret, raw.c.previous_secret)).all()
    for row in rows:
        previous = None if row.previous_secret is None else crypto.reencrypt(row.previous_secret)
        session.execute(
            raw.update().where(raw.c.id == row.id).values(secret=crypto.reencrypt(row.secret), previous_secret=previous)
        )
    return len(rows)


def secrets_in_use(endpoint: WebhookEndpoint) -> list[str]:
    """The current secret, and the previous one while its grace period lasts."""
    in_use = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > utcnow():
        in_use.append(endpoint.previous_secret)
    return in_use


def list_deliveries(
    *, session: Session, endpoint_id: int, status: DeliveryStatus | None, limit: int, offset: int
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent, list[WebhookAttempt]]], int]:
    """A page of an endpoint's deliveries (newest first) with their events and attempts, and the total."""
    get(session=session, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = list(session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset)))
    out = []
    for delivery in page:
        attempts = list(
            session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id).order_by(WebhookAttempt.id)
            )
        )
        event = session.get(WebhookEvent, delivery.event_id)
        assert event is not None
        out.append((delivery, event, attempts))
    return out, total


def _reset(delivery: WebhookDelivery) -> None:
    delivery.status = DeliveryStatus.pending
    delivery.attempts = 0
    delivery.task_id = None
    delivery.finished_at = None


def redeliver(*, session: Session, endpoint_id: int, delivery_id: int) -> WebhookDelivery:
    """Send one delivery again (same `webhook-id`, a fresh attempt budget), after commit."""
    endpoint = get(session=session, endpoint_id=endpoint_id)
    if not endpoint.enabled:
        raise EndpointDisabled(endpoint_id)
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        raise DeliveryNotFound(delivery_id)
    _reset(delivery)
    session.flush()
    events.publish_after_commit(session, [delivery.id])
    return delivery


def recover(*, session: Session, endpoint_id: int, since: datetime, until: datetime | None = None) -> int:
    """Replay a time range after an outage: every subscribed event since `since` that this endpoint has not
    received (failed, or never delivered because it was disabled) is delivered again; returns how many."""
    endpoint = get(session=session, endpoint_id=endpoint_id)
    if not endpoint.enabled:
        raise EndpointDisabled(endpoint_id)
    query = select(WebhookEvent).where(WebhookEvent.created_at >= since)
    if until is not None:
        query = query.where(WebhookEvent.created_at < until)
    existing = {
        d.event_id: d
        for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    }
    queued: list[WebhookDelivery] = []
    for event in session.scalars(query.order_by(WebhookEvent.id)):
        if not events.subscribed(endpoint, event.type):
            continue
        delivery = existing.get(event.id)
        if delivery is None:
            delivery = WebhookDelivery(message_id=f"msg_{uuid.uuid4().hex}", endpoint_id=endpoint.id, event_id=event.id)
            session.add(delivery)
        elif delivery.status == DeliveryStatus.succeeded:
            continue
        _reset(delivery)
        queued.append(delivery)
    session.flush()
    events.publish_after_commit(session, [d.id for d in queued])
    return len(queued)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: `retry_in` seconds when the task should try again."""

    delivery_id: int
    status: str
    attempt: int
    status_code: int | None = None
    retry_in: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The task's result."""
        return {
            "delivery_id": self.delivery_id,
            "status": self.status,
            "attempt": self.attempt,
            "status_code": self.status_code,
        }


def payload(event: WebhookEvent) -> bytes:
    """The body of every delivery of `event` (the same bytes on every retry): type, timestamp, data."""
    body = {"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.data}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def deliver(*, delivery_id: int, settings: Settings) -> Outcome:
    """Make one attempt of a delivery. No transaction stays open during the HTTP request."""
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return Outcome(delivery_id, "missing", 0)
        if delivery.status != DeliveryStatus.pending:
            return Outcome(delivery_id, str(delivery.status), delivery.attempts)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        event = session.get(WebhookEvent, delivery.event_id)
        assert endpoint is not None and event is not None
        if not endpoint.enabled:
            delivery.status = DeliveryStatus.failed
            delivery.last_error = "the endpoint is disabled"
            delivery.finished_at = utcnow()
            return Outcome(delivery_id, "failed", delivery.attempts)
        url, keys, message_id = endpoint.url, secrets_in_use(endpoint), delivery.message_id
        body = payload(event)
    attempt = _attempt(url, keys, message_id, body, settings)
    return _settle(delivery_id, attempt, settings)


@dataclass(frozen=True)
class _Attempt:
    status_code: int | None
    latency_ms: int | None
    excerpt: str | None
    error: str | None
    retry_after: float | None
    refused: bool = False


def _attempt(url: str, keys: list[str], message_id: str, body: bytes, settings: Settings) -> _Attempt:
    headers = signing.headers(keys, message_id, int(time.time()), body)
    try:
        with egress.client(settings.webhook_timeout_s) as http:
            response = egress.request(
                http,
                "POST",
                url,
                settings,
                max_bytes=settings.webhook_response_max_bytes,
                headers=headers,
                content=body,
            )
    except EgressRefused as exc:
        return _Attempt(None, None, None, f"refused by the egress policy: {exc.message}"[:500], None, refused=True)
    except httpx.HTTPError as exc:
        return _Attempt(None, None, None, f"{type(exc).__name__}: {exc}"[:500], None)
    excerpt = response.body[:EXCERPT_CHARS].decode("utf-8", "replace")
    return _Attempt(response.status_code, response.latency_ms, excerpt, None, retry_after(response.headers))


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), if any."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def backoff(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter, at least a second, capped by WEBHOOK_RETRY_MAX_S."""
    ceiling = min(settings.webhook_retry_max_s, settings.webhook_retry_base_s * 2 ** (attempt - 1))
    return max(1.0, random.uniform(ceiling / 2, ceiling))


def _settle(delivery_id: int, attempt: _Attempt, settings: Settings) -> Outcome:
    """Record the attempt and decide: succeeded, retry, failed; disable a gone or persistently failing endpoint."""
    code = attempt.status_code
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        assert endpoint is not None
        delivery.attempts += 1
        number = delivery.attempts
        delivery.last_status_code = code
        delivery.last_error = attempt.error
        if code is not None and 200 <= code < 300:
            outcome = "succeeded"
        elif code == 410:
            outcome = "gone"
        elif attempt.refused or (code is not None and 400 <= code < 500 and code not in RETRYABLE):
            outcome = "failed"
        else:
            outcome = "retry" if number < settings.webhook_max_attempts else "failed"
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                status_code=code,
                latency_ms=attempt.latency_ms,
                outcome=outcome,
                error=attempt.error,
                response_excerpt=attempt.excerpt,
            )
        )
        if outcome == "retry":
            wait = attempt.retry_after if attempt.retry_after is not None else backoff(number, settings)
            logger.info("Delivery %s attempt %d got %s; retrying in %.0f s.", delivery_id, number, code, wait)
            return Outcome(delivery_id, "retry", number, code, retry_in=max(1.0, wait))
        delivery.finished_at = utcnow()
        if outcome == "succeeded":
            delivery.status = DeliveryStatus.succeeded
            endpoint.consecutive_failures = 0
            return Outcome(delivery_id, "succeeded", number, code)
        delivery.status = DeliveryStatus.failed
        endpoint.consecutive_failures += 1
        if outcome == "gone":
            _disable(session, endpoint, "the receiver answered 410 Gone")
        elif endpoint.enabled and endpoint.consecutive_failures >= settings.webhook_disable_after_failures:
            _disable(session, endpoint, f"{endpoint.consecutive_failures} deliveries in a row failed")
        logger.warning(
            "Delivery %s failed for good after %d attempt(s): %s.", delivery_id, number, attempt.error or code
        )
        return Outcome(delivery_id, "failed", number, code)


def _disable(session: Session, endpoint: WebhookEndpoint, why: str) -> None:
    """Disable an endpoint, record it, tell the other subscribers, and notify its owner."""
    if not endpoint.enabled:
        return
    endpoint.enabled = False
    endpoint.disabled_reason = why[:500]
    audit_service.record(
        session=session,
        actor="courier",
        action="integrations.webhook.disable",
        target=f"webhook_endpoint:{endpoint.id}",
        reason=why,
        details={"url": endpoint.url, "owner": endpoint.owner},
    )
    events.emit(
        session,
        "integration.unhealthy",
        {"kind": "webhook_endpoint", "endpoint_id": endpoint.id, "reason": why},
    )
    notify_owner(session=session, endpoint=endpoint, why=why)
    logger.warning("Webhook endpoint %s (%s) disabled: %s.", endpoint.id, endpoint.url, why)


def notify_owner(*, session: Session, endpoint: WebhookEndpoint, why: str) -> bool:
    """E-mail the endpoint's owner (`owner_user_id`) that it was disabled, sent after the commit; False when no
    user is named (the audit entry and the `integration.unhealthy` event remain)."""
    user = session.get(User, endpoint.owner_user_id) if endpoint.owner_user_id is not None else None
    if user is None:
        logger.info("Webhook endpoint %s names no user to notify of its disabling.", endpoint.id)
        return False
    notifications.notify(
        session,
        channel="email",
        recipient=user.email,
        subject=f"Courier disabled your webhook endpoint {endpoint.id}",
        body=(
            f"Courier stopped delivering to {endpoint.url}: {why}.\n"
            "Fix the receiver, then enable the endpoint again (PATCH enabled=true) and replay what it missed "
            f"with POST /api/v1/integrations/webhooks/{endpoint.id}/recover."
        ),
        created_by="integrations",
        dedupe_key=f"webhook_disabled:{endpoint.id}:{utcnow().isoformat()}",
    )
    return True


def actor_name(actor: Principal | str) -> str:
    """The name an endpoint records as its owner."""
    return actor.name if isinstance(actor, Principal) else actor
