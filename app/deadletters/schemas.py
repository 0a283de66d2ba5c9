"""Pydantic shapes of the dead-letter API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.deadletters.models import Reason, Status


class AttemptRead(BaseModel):
    """One failed attempt of the task."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int
    outcome: str
    error: str | None
    traceback: str | None
    worker: str | None
    at: datetime


class DeadLetterSummary(BaseModel):
    """A dead letter in a listing."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: str | None
    task_name: str | None
    reason: Reason
    error_class: str | None
    error: str | None
    queue: str | None
    retries: int
    replays: int
    status: Status
    recorded_at: datetime
    first_death_at: datetime | None
    last_death_at: datetime | None


class DeadLetterRead(DeadLetterSummary):  # type: ignore[no-redef]  # pydantic-mypy: a field named `kwargs`
    """Everything recorded about one dead letter (arguments redacted)."""

    traceback: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    exchange: str | None
    routing_key: str | None
    death_count: int
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None
    content_type: str | None
    headers: dict[str, Any] | None
    attempts: list[AttemptRead] = []


class DeadLetterGroup(BaseModel):
    """How many letters share a (task, reason, error class)."""

    task_name: str | None
    reason: str
    error_class: str | None
    count: int
    #: When the group's oldest and newest letters (of those that match) were recorded.
    first_seen: datetime | None = None
    last_seen: datetime | None = None


class DeadLetterPage(BaseModel):
    """A page of dead letters, the total, and grouped counts."""

    items: list[DeadLetterSummary]
    total: int
    limit: int
    offset: int
    groups: list[DeadLetterGroup]


class ReplayCreate(BaseModel):
    """Replay one letter; `kwargs` replaces the task's keyword arguments (fix the input, then replay)."""

    model_config = ConfigDict(extra="forbid")

    why: str | None = Field(default=None, max_length=500, description="recorded in the audit trail")
    kwargs: dict[str, Any] | None = None


class DeadLetterCriteria(BaseModel):
    """Which pending letters a bulk action applies to; every field narrows the set."""

    model_config = ConfigDict(extra="forbid")

    task_name: str | None = Field(default=None, max_length=200)
    reason: Reason | None = None
    queue: str | None = Field(default=None, max_length=200)
    error_class: str | None = Field(default=None, max_length=200)
    since: datetime | None = None
    until: datetime | None = None


class BulkReplayCreate(DeadLetterCriteria):
    """Bulk replay by filter: `dry_run` only counts; otherwise a low-tier task replays at `rate_per_s`."""

    dry_run: StrictBool = False
    rate_per_s: float = Field(default=20.0, gt=0, le=1000)
    why: str | None = Field(default=None, max_length=500)


class BulkReplayRead(BaseModel):
    """What a bulk replay matched, and the task that does it (none for a dry run)."""

    matched: int
    dry_run: bool
    task_id: str | None = None
    status_url: str | None = None


class PurgeCreate(DeadLetterCriteria):
    """Discard every pending letter that matches, with a reason."""

    why: str = Field(min_length=1, max_length=500)


class PurgeRead(BaseModel):
    """How many letters were discarded."""

    discarded: int
