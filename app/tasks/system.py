"""System tasks: a probe that exercises the whole path, and history pruning."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from app.config import get_settings
from app.db import session_scope
from app.engine.task import CourierTask, PermanentError, TransientError, courier_task
from app.runs import service as runs_service

logger = logging.getLogger(__name__)


#: How the probe can be asked to fail, to rehearse each dead-letter path on a live stack.
FAIL_MODES = ("none", "permanent", "transient", "crash", "hang")
#: Seconds per sleep of a hanging probe (it sleeps again and again until its hard time limit kills it).
HANG_STEP_S = 60.0


@courier_task("system.ping")
def ping(
    self: CourierTask, *, sleep_s: float = 0.0, fail: str = "none", echo: str | None = None, steps: int = 0
) -> dict[str, Any]:
    """Answer `pong` after `sleep_s` seconds, or fail as asked: a permanent error, a transient one (retried
    with backoff, then dead-lettered), a crash of the pool process running it (worker lost), or a hang that
    ignores the soft time limit and never returns, whatever `sleep_s` (only the hard one stops it). With
    `steps`, the sleep is cut into that many steps, each reported as PROGRESS {current, total}, to rehearse
    live progress."""
    started = time.time()
    for step in range(1, max(0, steps) + 1):
        _sleep(sleep_s / steps, ignore_soft_limit=fail == "hang")
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
        logger.info("ping step %d/%d done.", step, steps)
    if steps <= 0:
        _sleep(sleep_s, ignore_soft_limit=fail == "hang")
    if fail == "hang" and not self.request.is_eager:  # (eager mode enforces no time limit: it would never end)
        logger.warning("ping %s hangs, as asked, until its hard time limit stops it.", self.request.id)
        while True:
            _sleep(HANG_STEP_S, ignore_soft_limit=True)
    if fail == "permanent":
        raise PermanentError(f"ping {self.request.id} was asked to fail")
    if fail == "transient":
        raise TransientError(f"ping {self.request.id} was asked to fail transiently (attempt {self.request.retries})")
    if fail == "crash":
        logger.warning("ping %s was asked to crash its process.", self.request.id)
        os.kill(os.getpid(), signal.SIGKILL)
    return {
        "pong": True,
        "echo": echo,
        "started_at": started,
        "worker": self.request.hostname,
        "priority": (self.request.delivery_info or {}).get("priority"),
    }


def _sleep(seconds: float, *, ignore_soft_limit: bool) -> None:
    """Sleep; a hanging probe swallows the soft time limit, as stuck code does, so only the hard one stops it."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            if not ignore_soft_limit:
                raise
            logger.warning("ping is ignoring its soft time limit, as asked.")


@courier_task("runs.prune_history")
def prune_history(self: CourierTask) -> dict[str, int]:
    """Delete finished runs (and their failed attempts) older than HISTORY_RETENTION_DAYS, a batch per transaction."""
    deleted = 0
    while True:
        with session_scope() as session:
            batch = runs_service.prune(session=session, older_than_days=get_settings().history_retention_days)
        if not batch:
            break
        deleted += batch
    logger.info("Pruned %d row(s) of run history (finished runs and their attempts).", deleted)
    return {"deleted": deleted}
