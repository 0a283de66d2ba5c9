"""SQL table of the dead-letter store."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Reason(StrEnum):
    """Why a message ended in the dead-letter queue."""

    #: A transient error persisted through every retry.
    retries_exhausted = "retries_exhausted"
    #: A non-retryable error (bad input, 4xx, permanent SMTP failure): no retry.
    failed = "failed"
    #: The soft or hard time limit struck.
    timeout = "timeout"
    #: No task of that name is registered.
    unknown_task = "unknown_task"
    #: The body cannot be decoded, or content type or headers are wrong.
    malformed = "malformed"
    #: The worker died running it, more often than allowed.
    worker_lost = "worker_lost"
    #: It expired (`expires`, or a queue TTL) before a worker ran it.
    expired = "expired"
    #: A work queue's length cap pushed it out.
    queue_full = "queue_full"
    #: Redis (the start check or the result store) stayed unreachable through every outage retry; the error
    #: class is the Redis error's. The task may have run (its result could not be stored): a replay re-runs it.
    infra_unavailable = "infra_unavailable"
    #: A message the worker published for it (its retry, into a delay queue) could not be routed by RabbitMQ:
    #: the queue is missing or unbound. Fix the topology (`python -m app.cli topology declare`), then replay.
    unroutable = "unroutable"


class Status(StrEnum):
    """What an admin has done about a dead letter."""

    pending = "pending"
    replayed = "replayed"
    discarded = "discarded"


class DeadLetter(Base):
    """One dead-lettered message, recorded before RabbitMQ's TTL or cap can remove it."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: sha256 of the message identity and its death; makes recording idempotent.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    task_name: Mapped[str | None] = mapped_column(String(200), index=True)
    reason: Mapped[Reason] = mapped_column(String(30), index=True)
    error_class: Mapped[str | None] = mapped_column(String(200), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    #: Arguments with secret-looking values redacted.
    args: Mapped[list[object] | None] = mapped_column(JSON)
    kwargs: Mapped[dict[str, object] | None] = mapped_column(JSON)
    queue: Mapped[str | None] = mapped_column(String(200), index=True)
    exchange: Mapped[str | None] = mapped_column(String(200))
    routing_key: Mapped[str | None] = mapped_column(String(200))
    retries: Mapped[int] = mapped_column(default=0)
    death_count: Mapped[int] = mapped_column(default=1)
    first_death_at: Mapped[datetime | None]
    last_death_at: Mapped[datetime | None]
    #: How many times this task id was replayed from the dead-letter store before this death.
    replays: Mapped[int] = mapped_column(default=0)
    status: Mapped[Status] = mapped_column(String(20), default=Status.pending, index=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution_note: Mapped[str | None] = mapped_column(String(500))
    #: What replay needs: AMQP properties, headers (x-death kept for the record), body as received.
    content_type: Mapped[str | None] = mapped_column(String(100))
    content_encoding: Mapped[str | None] = mapped_column(String(50))
    properties: Mapped[dict[str, object] | None] = mapped_column(JSON)
    headers: Mapped[dict[str, object] | None] = mapped_column(JSON)
    body: Mapped[str | None] = mapped_column(Text)
    #: True when `body` is base64 (it was not valid UTF-8).
    body_base64: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (Index("ix_dead_letters_recorded_at", "recorded_at"),)
