"""Pydantic schemas of the audit API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.audit.models import ReportKind, ReportStatus
from app.schema_types import Id


class AuditEventRead(BaseModel):
    """One audit entry, with its chain links."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    target: str | None
    outcome: str
    reason: str | None
    details: dict[str, Any] | None
    request_id: str | None
    client_address: str | None
    prev_hash: str
    hash: str


class AuditEventPage(BaseModel):
    """A page of entries, newest first."""

    items: list[AuditEventRead]
    total: int
    limit: int
    offset: int


class VerificationRead(BaseModel):
    """The chain walk: ok, entries checked (archives included), and the first broken link if any."""

    ok: bool
    checked: int
    first_broken_id: int | None
    problem: str | None
    archives_checked: int


class ReportCreate(BaseModel):
    """`daily`: `day` (default yesterday, UTC). `gdpr`: `user_id` (and `email` if known). `sox`: `since`, `until`."""

    model_config = ConfigDict(extra="forbid")

    kind: ReportKind
    day: date | None = None
    user_id: Id | None = None
    email: str | None = Field(default=None, max_length=320)
    since: datetime | None = None
    until: datetime | None = None

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> ReportCreate:
        if self.day is not None and self.day >= date.max:
            # The day's report reads [day, day + 1): the last representable date has no end, and the worker's
            # report failed on it (OverflowError) after the 202.
            raise ValueError(f"day must be before {date.max.isoformat()}")
        if self.kind is ReportKind.gdpr and self.user_id is None:
            raise ValueError("a gdpr report needs user_id")
        if self.kind is ReportKind.sox:
            if self.since is None or self.until is None:
                raise ValueError("a sox report needs since and until")
            if self.since.tzinfo is None or self.until.tzinfo is None:
                raise ValueError("since and until need a timezone (e.g. ...Z)")
            if self.since >= self.until:
                raise ValueError("since must be before until")
        return self


class ReportRead(BaseModel):
    """A report's state; `download_url` once it is ready."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: ReportKind
    params: dict[str, Any]
    status: ReportStatus
    requested_by: str
    task_id: str | None
    summary: dict[str, Any] | None
    files: dict[str, str] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None = None


class ReportAccepted(BaseModel):
    """The 202 of a report request."""

    report_id: int
    task_id: str
    status_url: str
    report_url: str


DownloadFormat = Literal["json", "csv"]
