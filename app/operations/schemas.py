"""Pydantic schemas of the operations API (the CLI's --json prints the same shapes)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.runs.schemas import QueueRead, WorkerRead


class PauseCreate(BaseModel):
    """Why a tier is paused (recorded in the audit trail)."""

    reason: str | None = Field(default=None, max_length=500)


class PauseRead(BaseModel):
    """A paused tier."""

    model_config = ConfigDict(from_attributes=True)

    queue: str
    paused_at: datetime
    paused_by: str | None
    reason: str | None


class QueueControlRead(BaseModel):
    """The outcome of a pause or resume: the tier's state and the workers that acknowledged it live."""

    queue: str
    paused: bool
    workers: list[str]


class PurgeCreate(BaseModel):
    """A purge: first without `confirm_token` (answers 409 with one), then with it."""

    confirm_token: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, max_length=500)


class PurgeRead(BaseModel):
    """How many messages a purge dropped."""

    queue: str
    purged: int


class TaskPerformance(BaseModel):
    """Throughput and run times of one task name over a window."""

    name: str
    finished: int
    succeeded: int
    failed: int
    per_minute: float
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


class PerformanceRead(BaseModel):
    """Throughput and run times over a window, per task and in total."""

    window_s: int
    finished: int
    per_minute: float
    p50_s: float | None
    p95_s: float | None
    tasks: list[TaskPerformance]


class OverviewRead(BaseModel):
    """One screen for operators: queues, workers, paused tiers, dead letters, recent counts."""

    queues: list[QueueRead]
    workers: list[WorkerRead]
    paused: list[PauseRead]
    dead_letters_pending: int
    window_s: int
    #: Where the window starts: `counts` are of the runs created since then.
    since: datetime
    counts: dict[str, int]
    per_minute: float
