"""System tasks: a probe that exercises the whole path, and history pruning."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.config import get_settings
from app.db import session_scope
from app.runs import service as runs_service
from app.tasks.base import CourierTask, PermanentError, courier_task

logger = logging.getLogger(__name__)


@courier_task("system.ping")
def ping(self: CourierTask, *, sleep_s: float = 0.0, fail: bool = False, echo: str | None = None) -> dict[str, Any]:
    """Answer `pong` after `sleep_s` seconds; with `fail`, raise a permanent error (dead-letter path)."""
    started = time.time()
    if sleep_s:
        time.sleep(sleep_s)
    if fail:
        raise PermanentError(f"ping {self.request.id} was asked to fail")
    return {
        "pong": True,
        "echo": echo,
        "started_at": started,
        "worker": self.request.hostname,
        "priority": (self.request.delivery_info or {}).get("priority"),
    }


@courier_task("runs.prune_history")
def prune_history(self: CourierTask) -> dict[str, int]:
    """Delete finished runs older than HISTORY_RETENTION_DAYS."""
    with session_scope() as session:
        deleted = runs_service.prune(session=session, older_than_days=get_settings().history_retention_days)
    logger.info("Pruned %d finished run(s) from the history.", deleted)
    return {"deleted": deleted}
