"""Integrations under /api/v1/integrations: webhook endpoints, their delivery log, events, external systems."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from app.access.schemas import Principal
from app.api.deps import AdminDep, PrincipalDep, SessionDep, SettingsDep
from app.engine import publish
from app.errors import Unprocessable, error_responses
from app.events import service as events
from app.events.models import DeliveryStatus, WebhookEndpoint
from app.integrations import sync, webhooks
from app.integrations.exceptions import EndpointNotFound
from app.integrations.schemas import (
    AttemptRead,
    DeliveryPage,
    DeliveryRead,
    Dispatched,
    EventCreate,
    EventRead,
    IntegrationCreate,
    IntegrationRead,
    RecoverCreate,
    RecoverRead,
    SecretRotated,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
    WebhookEndpointUpdate,
)
from app.schema_types import Id, Offset

router = APIRouter()


def _owned(session: Session, endpoint_id: int, principal: Principal) -> WebhookEndpoint:
    """The endpoint, if the caller owns it or is an admin (otherwise it does not exist for them)."""
    endpoint = webhooks.get(session=session, endpoint_id=endpoint_id)
    if not principal.reads_everything and endpoint.owner != principal.name:
        raise EndpointNotFound(endpoint_id)
    return endpoint


@router.post("/webhooks", response_model=WebhookEndpointCreated, status_code=status.HTTP_201_CREATED)
def create_webhook(
    body: WebhookEndpointCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> WebhookEndpointCreated:
    """Register an endpoint; the answer carries its signing secret, shown this once."""
    endpoint, secret = webhooks.create(session=session, owner=principal.name, settings=settings, **body.model_dump())
    return WebhookEndpointCreated(**WebhookEndpointRead.model_validate(endpoint).model_dump(), secret=secret)


@router.get("/webhooks", response_model=list[WebhookEndpointRead])
def list_webhooks(session: SessionDep, principal: PrincipalDep) -> list[WebhookEndpointRead]:
    """The caller's endpoints (an admin sees all)."""
    found = webhooks.list_endpoints(session=session)
    return [
        WebhookEndpointRead.model_validate(e) for e in found if principal.reads_everything or e.owner == principal.name
    ]


@router.get("/webhooks/{endpoint_id}", response_model=WebhookEndpointRead, responses=error_responses(404))
def read_webhook(endpoint_id: Id, session: SessionDep, principal: PrincipalDep) -> WebhookEndpointRead:
    """One endpoint."""
    return WebhookEndpointRead.model_validate(_owned(session, endpoint_id, principal))


@router.patch("/webhooks/{endpoint_id}", response_model=WebhookEndpointRead, responses=error_responses(404))
def update_webhook(
    endpoint_id: Id, body: WebhookEndpointUpdate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> WebhookEndpointRead:
    """Change its URL, event types, description, or enable/disable it."""
    _owned(session, endpoint_id, principal)
    changes = body.model_dump(exclude_unset=True)
    return WebhookEndpointRead.model_validate(
        webhooks.update(session=session, endpoint_id=endpoint_id, changes=changes, settings=settings)
    )


@router.delete("/webhooks/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_webhook(endpoint_id: Id, session: SessionDep, principal: PrincipalDep) -> None:
    """Remove the endpoint and its delivery log."""
    _owned(session, endpoint_id, principal)
    webhooks.delete(session=session, endpoint_id=endpoint_id)


@router.post("/webhooks/{endpoint_id}/rotate-secret", response_model=SecretRotated, responses=error_responses(404))
def rotate_webhook_secret(
    endpoint_id: Id, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> SecretRotated:
    """A new secret (shown once); deliveries carry both signatures until the old one's grace period ends."""
    _owned(session, endpoint_id, principal)
    endpoint, secret = webhooks.rotate_secret(session=session, endpoint_id=endpoint_id, settings=settings)
    return SecretRotated(id=endpoint.id, secret=secret, previous_secret_expires_at=endpoint.previous_secret_expires_at)


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=DeliveryPage, responses=error_responses(404))
def list_webhook_deliveries(
    endpoint_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    state: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> DeliveryPage:
    """The delivery log, newest first: each delivery with every attempt (status, latency, response excerpt)."""
    _owned(session, endpoint_id, principal)
    page, total = webhooks.list_deliveries(
        session=session, endpoint_id=endpoint_id, status=state, limit=limit, offset=offset
    )
    items = [
        DeliveryRead(
            id=d.id,
            message_id=d.message_id,
            event_id=e.event_id,
            event_type=e.type,
            status=d.status,
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            finished_at=d.finished_at,
            attempt_log=[AttemptRead.model_validate(a) for a in attempts],
        )
        for d, e, attempts in page
    ]
    return DeliveryPage(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, 409, 503),
)
def redeliver_webhook(endpoint_id: Id, delivery_id: Id, session: SessionDep, principal: PrincipalDep) -> dict[str, int]:
    """Send one delivery again: same `webhook-id`, fresh attempts."""
    _owned(session, endpoint_id, principal)
    delivery = webhooks.redeliver(session=session, endpoint_id=endpoint_id, delivery_id=delivery_id)
    return {"delivery_id": delivery.id}


@router.post(
    "/webhooks/{endpoint_id}/recover",
    response_model=RecoverRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, 409, 503),
)
def recover_webhook(endpoint_id: Id, body: RecoverCreate, session: SessionDep, principal: PrincipalDep) -> RecoverRead:
    """Replay a time range after an outage: every subscribed event since `since` not yet delivered here."""
    _owned(session, endpoint_id, principal)
    queued = webhooks.recover(session=session, endpoint_id=endpoint_id, since=body.since, until=body.until)
    return RecoverRead(queued=queued)


@router.post("/events", response_model=EventRead, status_code=status.HTTP_202_ACCEPTED, responses=error_responses(503))
def emit_event(body: EventCreate, session: SessionDep, principal: PrincipalDep) -> EventRead:
    """Emit a client event; it fans out to every subscribed endpoint."""
    if body.type in events.COURIER_EVENTS:
        raise Unprocessable(f"{body.type!r} is one of Courier's own event types; clients cannot emit it.")
    event = events.emit(session, body.type, body.data, source=f"client:{principal.name}")
    count = events.delivery_count(session, event)
    return EventRead(event_id=event.event_id, type=event.type, created_at=event.created_at, deliveries=count)


@router.post(
    "/systems", response_model=IntegrationRead, status_code=status.HTTP_201_CREATED, responses=error_responses(403, 409)
)
def create_integration(
    body: IntegrationCreate, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> IntegrationRead:
    """Register an external system to pull records from (`GET base_url?cursor=&limit=`)."""
    return IntegrationRead.model_validate(sync.create(session=session, settings=settings, **body.model_dump()))


@router.get("/systems", response_model=list[IntegrationRead], responses=error_responses(403))
def list_integrations(session: SessionDep, _: AdminDep) -> list[IntegrationRead]:
    """Every external system with its sync progress and health."""
    return [IntegrationRead.model_validate(i) for i in sync.list_integrations(session=session)]


@router.get("/systems/{integration_id}", response_model=IntegrationRead, responses=error_responses(403, 404))
def read_integration(integration_id: Id, session: SessionDep, _: AdminDep) -> IntegrationRead:
    """One external system."""
    return IntegrationRead.model_validate(sync.get(session=session, integration_id=integration_id))


@router.post(
    "/systems/{integration_id}/sync",
    response_model=Dispatched,
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(403, 404, 503),
)
def sync_integration(integration_id: Id, session: SessionDep, admin: AdminDep) -> Dispatched:
    """Pull its records now (from the saved cursor on)."""
    sync.get(session=session, integration_id=integration_id)
    dispatched = publish.dispatch(
        "integrations.sync_external_system", kwargs={"integration_id": integration_id}, triggered_by=admin.name
    )
    return Dispatched(**dispatched.as_dict())
