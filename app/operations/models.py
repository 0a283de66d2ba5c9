"""SQL table of the operations domain: which tiers are paused (it outlives every worker restart)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class QueuePause(Base):
    """A tier no worker consumes until an admin resumes it; one row per paused tier."""

    __tablename__ = "queue_pauses"

    queue: Mapped[str] = mapped_column(String(20), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(String(500))
