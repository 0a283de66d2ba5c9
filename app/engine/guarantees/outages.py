"""Redis outages the worker meets on its own path: retried after a backoff, then dead-lettered naming the error.

The worker needs Redis before a task runs (the start check: revoked? how many starts?
app/engine/guarantees/starts.py) and after (the result store: app/engine/speed/pool.py,
app/engine/guarantees/results.py). An outage there says nothing about the task, so it is not the task's failure:
the attempt is put back on the broker, in a delay queue, and tried again (`CourierRequest`,
app/engine/guarantees/request.py), up to OUTAGE_RETRY_MAX times with exponential backoff (equal jitter, never
under a second: no hot loop). The task's own retry budget (`retries`) is untouched; the count rides the
message (OUTAGE_RETRIES_HEADER). An attempt still failing after that is dead-lettered as `infra_unavailable`,
with the Redis error's class.

A task whose result could not be stored has run: putting it back runs it again, which product rule 2
(at-least-once, idempotent effects) allows; losing it, or calling it malformed, it does not.
"""

from __future__ import annotations

import logging
import random

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Reject

from app import redis_store
from app.config import Settings
from app.logging import StateChangeLog

logger = logging.getLogger(__name__)

#: A Redis outage on the worker's path, logged when it starts, every OUTAGE_LOG_INTERVAL_S while it lasts and when
#: a result store succeeds again (app/engine/speed/pool.py): never a line per attempt put back.
redis_outage = StateChangeLog(
    logger, "Redis", consequence="the worker puts attempts back in delay queues until it returns"
)

#: Redis errors that mean "unreachable for now" (app/redis_store.py): refused or dropped connections, timeouts, a
#: read-only replica, a Redis at its `maxmemory` or unable to persist (its disk full).
OUTAGE_ERRORS: tuple[type[Exception], ...] = redis_store.OUTAGE_ERRORS


class InfraUnavailable(Exception):  # noqa: N818 (it names what happened, like WorkerLostError)
    """Redis was unreachable at `step` of the worker's path; `error_class` and `error` are the Redis error's.

    Plain values only, so it crosses from a pool child to the main process, and through the result backend's
    JSON, unchanged.
    """

    def __init__(self, step: str, error_class: str, error: str) -> None:
        super().__init__(step, error_class, error)
        self.step, self.error_class, self.error = step, error_class, error

    def __str__(self) -> str:
        return f"Redis was unreachable at {self.step}: {self.error_class}: {self.error}"

    @classmethod
    def at(cls, step: str, exc: BaseException) -> InfraUnavailable:
        """The outage `exc` (a Redis error) met at `step`."""
        return cls(step, type(exc).__name__, str(exc)[:500])


def cause(exc: BaseException | None) -> InfraUnavailable | None:
    """The outage behind a failure reported to the worker's main process, or None when it is the task's own.

    A child reports an outage of the start check as Reject(InfraUnavailable); a Redis error itself comes from the
    result store, or from a child that could not store its task's outcome (then the outcome is unknown, and the
    attempt runs again).
    """
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, Reject):
        exc = exc.reason if isinstance(exc.reason, BaseException) else None
    if isinstance(exc, InfraUnavailable):
        return exc
    if isinstance(exc, OUTAGE_ERRORS):  # from the pool child: the task's own Redis use, or storing its outcome
        return InfraUnavailable.at("the task or the store of its outcome", exc)
    return None


def backoff_s(done: int, settings: Settings) -> int:
    """Seconds to wait before outage retry `done + 1`: base × 2^done, capped, with equal jitter; at least 1."""
    ceiling = min(settings.outage_retry_backoff_max_s, settings.outage_retry_backoff_s * 2**done)
    return max(1, int(round(ceiling / 2 + random.uniform(0, ceiling / 2))))
