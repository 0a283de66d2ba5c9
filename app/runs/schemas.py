"""Pydantic shapes of the task-management API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from app.constants import TaskState, Tier

#: A Celery task id as Courier issues them (UUID text); anything longer is refused before any lookup.
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class DispatchedRead(BaseModel):
    """The 202 answer of every dispatching endpoint."""

    task_id: str
    status_url: str


class PingCreate(BaseModel):
    """Run the probe task on a tier."""

    model_config = ConfigDict(extra="forbid")

    tier: Tier = Tier.medium
    priority: int | None = Field(default=None, ge=0, le=10, description="0..the tier's max priority")
    sleep_s: float = Field(default=0.0, ge=0, le=60)
    fail: Literal["none", "permanent", "transient", "crash", "hang"] = "none"
    echo: str | None = Field(default=None, max_length=200)
    soft_time_limit_s: float | None = Field(default=None, gt=0, le=3600, description="overrides the task's")
    time_limit_s: float | None = Field(default=None, gt=0, le=3600, description="overrides the task's")
    expires_s: float | None = Field(default=None, gt=0, le=86_400, description="expire if not started by then")


class RunRead(BaseModel):
    """One row of the durable run history."""

    model_config = ConfigDict(from_attributes=True)

    task_id: str
    name: str
    tier: str | None
    state: TaskState
    attempts: int
    triggered_by: str | None
    worker: str | None
    created_at: datetime
    received_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runtime_s: float | None
    error: str | None


class RunPage(BaseModel):
    """A page of runs and the total that match the filter."""

    items: list[RunRead]
    total: int
    limit: int
    offset: int


class TaskRead(BaseModel):
    """Everything known about one task id, from Redis (live) and SQL (durable)."""

    task_id: str
    name: str | None
    state: TaskState | str
    tier: str | None
    attempts: int | None
    triggered_by: str | None
    worker: str | None
    result: Any = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    revoked: bool = False
    #: Set when the task ended in the dead-letter store: {id, reason, status, url}.
    dead_letter: dict[str, Any] | None = None


class RevokeCreate(BaseModel):
    """Revoke a task: it never starts; with `terminate`, a running one is killed too."""

    model_config = ConfigDict(extra="forbid")

    terminate: StrictBool = False
    reason: str | None = Field(default=None, max_length=500)


class RevokeRead(BaseModel):
    """What a revoke did."""

    task_id: str
    revoked: bool
    terminate: bool
    state: str
    #: Set when the revoke does less than a reader may think: the task was running, and without `terminate` it
    #: runs to its end (only an attempt not yet started, such as a retry, is prevented).
    note: str | None = None


class QueueRead(BaseModel):
    """One RabbitMQ queue's depth and consumers."""

    name: str
    ready: int
    unacked: int
    consumers: int
    policy: str | None
    arguments: dict[str, Any]
    #: Seconds the message at the head of the queue has waited (RabbitMQ's head_message_timestamp; Courier's
    #: publishers stamp every message), None when the queue is empty or the head carries no timestamp.
    head_message_age_s: float | None = None


class WorkerRead(BaseModel):
    """One worker as its heartbeat describes it."""

    hostname: str
    pid: int | None
    queues: list[str]
    concurrency: int | None
    pool: str | None
    heartbeat_age_s: float
    uptime_s: float | None


class StatsRead(BaseModel):
    """Counts over a window, queue depths, workers, success rate."""

    window_s: int
    counts: dict[str, int]
    total: int
    success_rate: float | None
    queues: dict[str, int]
    workers: int


class ComponentHealth(BaseModel):
    """One dependency's health."""

    status: Literal["up", "down"]
    latency_ms: float | None = None
    detail: str | None = None


class HealthRead(BaseModel):
    """Overall health: `up` only when every component is."""

    status: Literal["up", "down"]
    components: dict[str, ComponentHealth]


class ActiveTask(BaseModel):  # type: ignore[no-redef]  # pydantic-mypy: a field named `kwargs`
    """A task executing now on a worker."""

    task_id: str
    name: str | None
    worker: str
    started_at: datetime | None
    args: Any = None
    kwargs: Any = None


class ScheduledRead(BaseModel):
    """Countdown/ETA tasks held by workers, and the periodic schedule."""

    held: list[dict[str, Any]]
    periodic: list[dict[str, Any]]
