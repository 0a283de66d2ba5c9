"""Dead-letter tasks: bulk replay, paced so it cannot flood the workers."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.db import session_scope
from app.deadletters import service as deadletters
from app.deadletters.exceptions import NotReplayable, ReplayNotPublished
from app.deadletters.models import Status
from app.engine import dead_letters
from app.engine.task import CourierTask, courier_task

logger = logging.getLogger(__name__)


@courier_task("deadletters.replay_bulk")
def replay_bulk(
    self: CourierTask, *, letter_ids: list[int], actor: str, rate_per_s: float, why: str | None = None
) -> dict[str, int]:
    """Replay the given letters at most `rate_per_s` per second, reporting `current/total` as progress."""
    total, replayed, skipped = len(letter_ids), 0, 0
    interval = 1.0 / rate_per_s
    next_at = time.monotonic()
    for done, letter_id in enumerate(letter_ids, start=1):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = time.monotonic() + interval
        try:
            with session_scope() as session:
                if deadletters.get(session=session, letter_id=letter_id).status != Status.pending:
                    skipped += 1
                    continue
                dead_letters.replay(session=session, letter_id=letter_id, actor=actor, reason=why)
                replayed += 1
        except (NotReplayable, ReplayNotPublished) as exc:  # the letter stays as it was (pending, if it was)
            logger.warning("Bulk replay %s skipped dead letter %s: %s", self.request.id, letter_id, exc.message)
            skipped += 1
        if done % 10 == 0 or done == total:
            self.update_state(state="PROGRESS", meta={"current": done, "total": total})
    result: dict[str, Any] = {"total": total, "replayed": replayed, "skipped": skipped}
    logger.info("Bulk replay %s by %s finished: %s.", self.request.id, actor, result)
    return result
