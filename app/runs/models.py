"""SQL tables of the run history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.constants import TaskState
from app.db import Base, TimestampMixin


class TaskRun(TimestampMixin, Base):
    """One task id's history: the latest state and timings of every attempt under that id."""

    __tablename__ = "task_runs"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    tier: Mapped[str | None] = mapped_column(String(20))
    state: Mapped[TaskState] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    triggered_by: Mapped[str | None] = mapped_column(String(100))
    worker: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    runtime_s: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: Timestamp of the event that last changed this row; older events never overwrite newer ones.
    event_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_task_runs_created_at", "created_at"),
        Index("ix_task_runs_finished_at", "finished_at"),
    )


class Revocation(Base):
    """A task id that must never run; outlives Redis and worker restarts."""

    __tablename__ = "revocations"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_at: Mapped[datetime]
    revoked_by: Mapped[str | None] = mapped_column(String(100))
    terminate: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(String(500))
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)


class TaskAttempt(Base):
    """One failed attempt of a task (retried or final), from the worker's task events."""

    __tablename__ = "task_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), index=True)
    attempt: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime]
