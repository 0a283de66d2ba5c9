"""Worker pools that store the results of successful tasks in batches, from the worker's main process.

A task's SUCCESS result (and its history entry) used to cost the pool child a Redis round trip of its own,
and the benchmark showed pool children spending most of their time waiting on such round trips. Here the
child hands the encoded result back with its return value (the pipe to the main process carries it anyway),
and the main process stores every result that arrived in one turn of its event loop with one Redis script,
then acks those messages. The guarantee is unchanged: a message is acked only after its result is stored.
If the store fails, each of those tasks takes Celery's failure path: it is rejected to the dead-letter queue.

Failures, retries and revocations are stored by the child at once, as before: they are rare, and their order
relative to the reject or the retry's publish matters.

The main process also journals the start of each run still going after START_ENTRY_AFTER_S, or lost with its
pool child (a short run's start rides its outcome: app/runs/journal.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.concurrency import prefork, solo

from app.config import get_settings
from app.constants import HISTORY_STREAM
from app.redis_store import get_redis
from app.runs import journal

logger = logging.getLogger(__name__)

#: A deferred result: (result key, encoded value, TTL in seconds or 0, history entry or None).
Deferred = tuple[bytes, str, int, str | None]
#: What Celery's pool callbacks receive: (failed, retval, runtime).
Outcome = tuple[int, Any, float]

#: Results a task stored while `run_deferring` ran it; None outside it (then results are stored at once).
_collected: list[Deferred] | None = None


def collecting() -> list[Deferred] | None:
    """The list a SUCCESS result should be appended to instead of stored, or None to store it now."""
    return _collected


def run_deferring(target: Callable[..., Outcome], *args: Any, **kwargs: Any) -> tuple[int, Any, float, list[Deferred]]:
    """Run Celery's trace function `target` in the pool child, collecting its SUCCESS result instead of
    storing it; the main process stores it (`ResultBatch`)."""
    global _collected
    collected: list[Deferred] = []
    _collected = collected
    try:
        failed, retval, runtime = target(*args, **kwargs)
    finally:
        _collected = None
    return failed, retval, runtime, collected


class ResultBatch:
    """Results collected by the children, stored and then acked once per turn of the worker's event loop."""

    def __init__(self, store_many: Callable[[list[Deferred]], Any]) -> None:
        self.store_many = store_many
        self._pending: list[tuple[Callable[[Outcome], Any], Outcome, list[Deferred]]] = []

    def add(self, callback: Callable[[Outcome], Any], returned: tuple[int, Any, float, list[Deferred]]) -> None:
        """The pool's result callback: hold a task's outcome until its result is stored."""
        failed, retval, runtime, deferred = returned
        if not deferred:
            callback((failed, retval, runtime))
            return
        self._pending.append((callback, (failed, retval, runtime), deferred))

    def flush(self) -> None:
        """Store every held result in one round trip, then let Celery ack their messages (an event-loop tick)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.store_many([item for _, _, deferred in batch for item in deferred])
        except Exception as exc:  # noqa: BLE001 (any failure: none of these results is stored)
            logger.error("Storing %d results failed; their tasks are dead-lettered: %r.", len(batch), exc)
            failure = _exception_info(exc)
            outcomes: list[tuple[Callable[[Outcome], Any], Outcome]] = [
                (callback, (1, failure, runtime)) for callback, (_, _, runtime), _ in batch
            ]
        else:
            outcomes = [(callback, outcome) for callback, outcome, _ in batch]
        for callback, outcome in outcomes:
            try:
                callback(outcome)
            except Exception:  # one request's callback must not keep the others from being acked
                logger.exception("A task's completion callback failed.")


def _exception_info(exc: Exception) -> ExceptionInfo:
    try:
        raise exc
    except Exception:
        return ExceptionInfo()


class StartJournal:
    """Journals, from the main process, the start of each run still going after START_ENTRY_AFTER_S (checked
    every CHECK_S) or lost with its pool child (a killed child reports no outcome)."""

    CHECK_S = 0.25

    def __init__(self) -> None:
        #: task id → (monotonic and wall time the child accepted it, the message's request dict)
        self._running: dict[str, tuple[float, float, dict[str, Any]]] = {}
        self._journaled: set[str] = set()

    def accepted(self, task_id: str, request: dict[str, Any]) -> None:
        self._running[task_id] = (time.monotonic(), time.time(), request)

    def finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._journaled.discard(task_id)

    def lost(self, task_id: str) -> None:
        """The run ended without an outcome from its child: journal its start now, if it started."""
        if task_id in self._running and task_id not in self._journaled:
            self._write([task_id])
        self.finished(task_id)

    def journal_due(self) -> None:
        """Journal the start of every run accepted at least START_ENTRY_AFTER_S ago (a timer of the event loop)."""
        now = time.monotonic()
        due = [
            task_id
            for task_id, (since, _, _) in self._running.items()
            if task_id not in self._journaled and now - since >= journal.START_ENTRY_AFTER_S
        ]
        if due:
            self._write(due)

    def _write(self, task_ids: list[str]) -> None:
        try:
            pipe = get_redis().pipeline(transaction=False)
            for task_id in task_ids:
                _, at, request = self._running[task_id]
                event = journal.start_event(
                    task_id=task_id,
                    at=at,
                    name=str(request.get("task")),
                    retries=int(request.get("retries") or 0),
                    hostname=str(request.get("hostname")),
                    routing_key=(request.get("delivery_info") or {}).get("routing_key"),
                    headers=request,
                )
                pipe.xadd(HISTORY_STREAM, {journal.FIELD: journal.encode(event)}, **journal.xadd_args())
            pipe.execute()
        except Exception:  # the history's start entry is not worth stopping the consumer loop for
            logger.warning("Could not journal the start of %d running task(s).", len(task_ids), exc_info=True)
        self._journaled.update(task_ids)


class _BatchingPool:
    """Mixin over a Celery TaskPool: successful results go through a ResultBatch flushed on each loop tick, and
    the starts of long or lost runs through a StartJournal.

    Without an event loop (nothing would flush), results are stored by the children as before.
    """

    _batch: ResultBatch | None = None
    _starts: StartJournal | None = None

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)  # type: ignore[misc]
        app = self.app  # type: ignore[attr-defined]
        # The backend's retry policy applies (a Redis failover is waited out for a few seconds).
        self._batch = ResultBatch(lambda deferred: app.backend.ensure(app.backend.store_many, (deferred,)))
        hub.on_tick.add(self._batch.flush)
        if get_settings().history_enabled:
            self._starts = StartJournal()
            hub.call_repeatedly(StartJournal.CHECK_S, self._starts.journal_due)

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        callback = options.get("callback")
        if self._batch is None or callback is None:
            return super().apply_async(target, args, kwargs, **options)  # type: ignore[misc]
        options["callback"] = partial(self._batch.add, callback)
        if self._starts is not None and len(args or ()) > 2 and isinstance(args[2], dict):
            # Celery's trace arguments: (type, task id, request dict, body, content type, content encoding).
            task_id, request = str(args[1]), args[2]
            options["callback"] = _then(partial(self._starts.finished, task_id), options["callback"])
            options["accept_callback"] = _then(
                partial(self._starts.accepted, task_id, request), options.get("accept_callback")
            )
            options["error_callback"] = _then(partial(self._starts.lost, task_id), options.get("error_callback"))
        return super().apply_async(run_deferring, (target, *(args or ())), kwargs, **options)  # type: ignore[misc]


def _then(first: Callable[[], Any], callback: Callable[..., Any] | None) -> Callable[..., Any]:
    """A callback that calls `first()`, then `callback` with the pool's arguments."""

    def both(*args: Any, **kwargs: Any) -> Any:
        first()
        return callback(*args, **kwargs) if callback is not None else None

    return both


class PreforkPool(_BatchingPool, prefork.TaskPool):  # type: ignore[misc]
    """`worker_pool = "prefork"`, batching results."""

    kind = "prefork"


class SoloPool(_BatchingPool, solo.TaskPool):  # type: ignore[misc]
    """`worker_pool = "solo"`, batching results."""

    kind = "solo"


#: CELERY_WORKER_POOL → the pool class Celery loads (`module:Class`).
POOLS = {"prefork": f"{__name__}:PreforkPool", "solo": f"{__name__}:SoloPool"}
