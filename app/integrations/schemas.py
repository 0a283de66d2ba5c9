"""Pydantic schemas of the integrations API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.events.models import DeliveryStatus
from app.events.service import ALL_EVENTS, EVENT_TYPE, SUBSCRIPTION
from app.schema_types import Id


def _event_type(value: str) -> str:
    if not EVENT_TYPE.match(value):
        raise ValueError("an event type looks like `domain.name` (lower case letters, digits, _)")
    return value


def _subscription(value: str) -> str:
    if value != ALL_EVENTS and not SUBSCRIPTION.match(value):
        raise ValueError("subscribe to `domain.name`, `domain.*`, or `*` for every type (lower case)")
    return value


EventType = Annotated[str, Field(max_length=100), AfterValidator(_event_type)]
Subscription = Annotated[str, Field(max_length=100), AfterValidator(_subscription)]
Url = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://")]


class WebhookEndpointCreate(BaseModel):
    """A receiver URL and the event types it wants (`*` for all)."""

    model_config = ConfigDict(extra="forbid")

    url: Url
    event_types: list[Subscription] = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    enabled: StrictBool = True
    #: The user told (by the notifications domain) when the endpoint is disabled.
    owner_user_id: Id | None = None


class WebhookEndpointUpdate(BaseModel):
    """Fields to change; enabling a disabled endpoint resets its failure count."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    event_types: list[Subscription] | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    enabled: StrictBool | None = None


class WebhookEndpointRead(BaseModel):
    """An endpoint (never its secret)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    description: str | None
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    owner: str
    owner_user_id: int | None
    consecutive_failures: int
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    """The endpoint with its signing secret: shown this once."""

    secret: str


class SecretRotated(BaseModel):
    """The new secret (shown once); the previous one keeps signing until `previous_secret_expires_at`."""

    id: int
    secret: str
    previous_secret_expires_at: datetime | None


class AttemptRead(BaseModel):
    """One HTTP attempt."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    latency_ms: int | None
    outcome: str
    error: str | None
    response_excerpt: str | None


class DeliveryRead(BaseModel):
    """One event to this endpoint, with every attempt."""

    id: int
    message_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[AttemptRead]


class DeliveryPage(BaseModel):
    """A page of deliveries, newest first."""

    items: list[DeliveryRead]
    total: int
    limit: int
    offset: int


class RecoverCreate(BaseModel):
    """Replay every event in [since, until) this endpoint has not received."""

    model_config = ConfigDict(extra="forbid")

    since: datetime
    until: datetime | None = None


class RecoverRead(BaseModel):
    """How many deliveries were queued again."""

    queued: int


#: Largest `data` of a client event, as compact JSON (Standard Webhooks advises payloads under about 20 KB).
EVENT_DATA_MAX_BYTES = 65_536


class EventCreate(BaseModel):
    """A client's own event: its type (not one of Courier's) and its data (at most 64 KiB as JSON)."""

    model_config = ConfigDict(extra="forbid")

    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":"), default=str)) > EVENT_DATA_MAX_BYTES:
            raise ValueError(f"data is larger than {EVENT_DATA_MAX_BYTES} bytes as JSON")
        return value


class EventRead(BaseModel):
    """A recorded event and how many deliveries it fanned out to."""

    event_id: str
    type: str
    created_at: datetime
    deliveries: int


class IntegrationCreate(BaseModel):
    """An external system: a name and the URL of its paginated record listing."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    base_url: Url
    enabled: StrictBool = True


class IntegrationRead(BaseModel):
    """An external system, its sync progress and its health."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    base_url: str
    enabled: bool
    cursor: str | None
    records_synced: int
    last_synced_at: datetime | None
    sync_error: str | None
    health: str
    last_checked_at: datetime | None
    last_latency_ms: int | None
    last_status_code: int | None


class Dispatched(BaseModel):
    """The 202 of a dispatching endpoint."""

    task_id: str
    status_url: str
