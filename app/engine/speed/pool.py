"""Worker pools that store the results of successful tasks in batches, from the worker's main process.

Stock, a task's SUCCESS result (and its history entry) costs the pool child a Redis round trip of its own, and
pool children spend most of their time waiting on such round trips. Here the
child hands the encoded result back with its return value (the pipe to the main process carries it anyway),
and the main process stores every result that arrived in one turn of its event loop with one Redis script,
then acks those messages. The guarantee is unchanged: a message is acked only after its result is stored.
If the store fails, each of those tasks takes Celery's failure path: a Redis outage puts it back to run again
(app/engine/guarantees/outages.py), any other error rejects it to the dead-letter queue.

Failures, retries and revocations are stored by the child at once, as before: they are rare, and their order
relative to the reject or the retry's publish matters.

The check before each attempt (revoked? how many starts?) is made the same way: the jobs Celery hands to the
pool in one turn of the loop are held until the loop's next tick (Celery's semaphore already holds back every
job no child is free for), checked together in one Redis script (app/engine/guarantees/starts.py), and passed on with
their answers, which the child's `before_start` uses instead of a round trip of its own.

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
from celery.concurrency.asynpool import SCHED_STRATEGY_FAIR

from app.config import get_settings
from app.constants import HISTORY_STREAM
from app.engine.guarantees import outages, starts
from app.engine.guarantees.results import Deferred
from app.engine.guarantees.sending import HANDOFF_KEY
from app.engine.speed import amqp_transport
from app.redis_store import get_redis
from app.runs import journal

logger = logging.getLogger(__name__)

#: What Celery's pool callbacks receive: (failed, retval, runtime).
Outcome = tuple[int, Any, float]
#: An outcome waiting for its result to be stored: (Celery's callback, the outcome, the child's results).
Pending = tuple[Callable[[Outcome], Any], Outcome, list[Deferred]]
#: A job held until the loop's tick: (Celery's trace function, its arguments, keyword arguments, pool options).
Held = tuple[Any, tuple[Any, ...], Any, dict[str, Any]]


class HandOff:
    """What passes between `run_deferring` and the attempt it runs, in the pool child: the main process's start
    check in (`before_start`, app/engine/task.py), the SUCCESS result out (app/engine/speed/results.py).

    It rides the attempt's request (Celery's request dict becomes the task's `self.request`), so a task that one
    attempt runs inline or eagerly has a request of its own, without one, and stores and checks for itself.
    """

    __slots__ = ("_answer", "collected")

    def __init__(self, answer: starts.Answer | None) -> None:
        self._answer = answer
        #: SUCCESS results to be stored by the main process instead of now.
        self.collected: list[Deferred] = []

    def take_start_answer(self) -> starts.Answer | None:
        """The main process's start check for this attempt, once; None when the task must ask itself."""
        answer, self._answer = self._answer, None
        return answer

    @staticmethod
    def of(request: Any) -> HandOff | None:
        """The hand-off of the attempt whose request (a task's `self.request`) this is; None outside a pool child
        of Courier's pools."""
        handoff = getattr(request, HANDOFF_KEY, None)
        return handoff if isinstance(handoff, HandOff) else None


def run_deferring(
    target: Callable[..., Outcome], answer: starts.Answer | None, *args: Any, **kwargs: Any
) -> tuple[int, Any, float, list[Deferred]]:
    """Run Celery's trace function `target` in the pool child with the main process's start check `answer`,
    collecting its SUCCESS result instead of storing it; the main process stores it (`ResultBatch`).

    `args` are Celery's trace arguments (type, task id, request dict, body, ...): the attempt's HandOff goes into
    a copy of its request dict (an inline pool runs in the main process, whose request must not hold it).
    """
    handoff = HandOff(answer)
    if len(args) > 2 and isinstance(args[2], dict):
        args = (*args[:2], {**args[2], HANDOFF_KEY: handoff}, *args[3:])
    failed, retval, runtime = target(*args, **kwargs)
    return failed, retval, runtime, handoff.collected


class ResultBatch:
    """Results collected by the children, stored and then acked once per turn of the worker's event loop."""

    def __init__(self, store_many: Callable[[list[Deferred]], Any]) -> None:
        self.store_many = store_many
        #: Store each result as it comes instead of on the loop's tick (a warm shutdown: the loop has stopped).
        self.immediate = False
        self._pending: list[Pending] = []

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def add(self, callback: Callable[[Outcome], Any], returned: tuple[int, Any, float, list[Deferred]]) -> None:
        """The pool's result callback: hold a task's outcome until its result is stored."""
        failed, retval, runtime, deferred = returned
        if not deferred:
            callback((failed, retval, runtime))
            return
        self._pending.append((callback, (failed, retval, runtime), deferred))
        if self.immediate:
            self.flush()

    def take(self) -> list[Pending]:
        """The held outcomes, to store and then `settle`."""
        batch, self._pending = self._pending, []
        return batch

    @staticmethod
    def deferred(batch: list[Pending]) -> list[Deferred]:
        return [item for _, _, deferred in batch for item in deferred]

    @staticmethod
    def settle(batch: list[Pending], error: BaseException | None) -> None:
        """Let Celery finish each task: ack it when its result was stored, else take its failure path (a Redis
        outage: put back to run again; any other error: rejected without requeue, i.e. dead-lettered)."""
        outcomes: list[tuple[Callable[[Outcome], Any], Outcome]]
        if error is not None and batch:
            if isinstance(error, outages.OUTAGE_ERRORS):
                outages.redis_outage.failed(
                    f"storing {len(batch)} results failed; their tasks will run again: {error!r}"
                )
                error = outages.InfraUnavailable.at("the result store", error)
            else:
                logger.error("Storing %d results failed; their tasks are dead-lettered: %r.", len(batch), error)
            failure = _exception_info(error)
            outcomes = [(callback, (1, failure, runtime)) for callback, (_, _, runtime), _ in batch]
        else:
            outcomes = [(callback, outcome) for callback, outcome, _ in batch]
            outages.redis_outage.succeeded()  # the results were stored: Redis answers (one attribute read when up)
        with amqp_transport.batched_writes():  # the batch's acks in one send
            for callback, outcome in outcomes:
                try:
                    callback(outcome)
                except Exception:  # one request's callback must not keep the others from being acked
                    logger.exception("A task's completion callback failed.")

    def flush(self) -> None:
        """Store every held result in one round trip, then settle them (at once, in this thread)."""
        if not self._pending:
            return
        batch = self.take()
        error: Exception | None = None
        try:
            self.store_many(self.deferred(batch))
        except Exception as exc:  # any failure: none of these results is stored
            error = exc
        self.settle(batch, error)


def _exception_info(exc: BaseException) -> ExceptionInfo:
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

    #: Whether the jobs handed over in one turn can be checked together: they start at once, each on a free
    #: child (Celery's semaphore holds back the others), unlike an inline pool's, which run one after another.
    checks_in_batches = True
    _batch: ResultBatch | None = None
    _starts: StartJournal | None = None
    _held: list[Held]
    _on_poll_start: Callable[[], None] | None = None
    _loop_hub: Any = None

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)  # type: ignore[misc]
        self._loop_hub = hub
        app = self.app  # type: ignore[attr-defined]
        # The backend's retry policy applies (a Redis failover is waited out for a few seconds).
        self._batch = ResultBatch(lambda deferred: app.backend.ensure(app.backend.store_many, (deferred,)))
        self._held = []
        # Celery's prefork pool schedules its writes to the children from its own tick callback (`on_poll_start`).
        # The tick's order is a set's: run it right after ours, or the jobs this tick hands over would wait for
        # the next event, and the worker drains at a fraction of its speed. Ours writes to idle children
        # first (`_write_jobs`).
        on_poll_start = getattr(getattr(self, "_pool", None), "on_poll_start", None)
        if on_poll_start is not None and on_poll_start in hub.on_tick:
            hub.on_tick.discard(on_poll_start)
            self._on_poll_start = on_poll_start
        hub.on_tick.add(self._on_tick)
        if get_settings().history_enabled:
            self._starts = StartJournal()
            hub.call_repeatedly(StartJournal.CHECK_S, self._starts.journal_due)

    def on_stop(self) -> None:
        """Warm shutdown: the loop no longer ticks while the pool waits for its running jobs, so the results that
        came back are stored (and acked) now, and those still to come as they come. Held jobs never started:
        they stay unacked, and the broker redelivers them."""
        if self._batch is not None:
            self._held = []
            self._batch.immediate = True
            self._batch.flush()
        super().on_stop()  # type: ignore[misc]

    def _on_tick(self) -> None:
        self._tick()
        if self._on_poll_start is not None:
            self._write_jobs(self._on_poll_start)

    def _write_jobs(self, on_poll_start: Callable[[], None]) -> None:
        """Write the jobs handed over to idle children now, instead of through Celery's way.

        Celery registers every idle child's pipe with the poller, polls, writes one job per writable pipe, and
        unregisters them all again: several `epoll_ctl`s and a poll per turn of the loop, half of
        them on pipes not registered at all. An idle child's pipe is empty, so the write goes through at once;
        a job whose write cannot complete waits for its pipe in the poller, as Celery's own do. Jobs left (no
        child idle) and writes already waiting take Celery's way.
        """
        asyn = self._pool  # type: ignore[attr-defined]
        hub = self._loop_hub
        outbound, active, busy = asyn.outbound_buffer, asyn._active_writes, asyn._busy_workers
        inactive = [fd for fd in asyn._all_inqueues if fd not in active]
        if outbound:
            idle = [fd for fd in inactive if fd not in busy] if asyn.sched_strategy == SCHED_STRATEGY_FAIR else inactive
            if idle:
                hub.consolidate_callback(idle)  # Celery's schedule_writes, given the pipes it would have polled for
        if outbound or any(fd in hub.writers for fd in inactive):
            on_poll_start()

    def _tick(self) -> None:
        """Once per turn of the loop: store the results that came back and check the held jobs (one Redis round
        trip when Courier's Redis is the results'), then let Celery ack and hand the jobs over.

        The round trip stays on the loop's thread: on a thread of its own, with the loop collecting the next batch
        meanwhile, it drained no faster, because the loop is short of CPU, not waiting.
        """
        assert self._batch is not None
        # Until nothing is left: acking a batch frees Celery's semaphore, which hands over the next jobs, and
        # an inline pool runs them at once. Nothing would wake the loop's poll for them (the broker sends no more
        # until it has the acks, and the worker has already read what it sent).
        while self._held or self._batch.pending:
            if self.checks_in_batches:
                held, self._held = self._held, []
                self._store_check_and_hand_over(self._batch.take(), held)
            else:
                self._batch.flush()
                self._release_one_by_one()

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        args = tuple(args or ())
        # Celery's trace arguments: (type, task id, request dict, body, content type, content encoding).
        if self._batch is None or options.get("callback") is None or len(args) < 3 or not isinstance(args[2], dict):
            return super().apply_async(target, args, kwargs, **options)  # type: ignore[misc]
        task_id, request = str(args[1]), args[2]
        options["callback"] = partial(self._batch.add, options["callback"])
        if self._starts is not None:
            options["callback"] = _then(partial(self._starts.finished, task_id), options["callback"])
            options["accept_callback"] = _then(
                partial(self._starts.accepted, task_id, request), options.get("accept_callback")
            )
            options["error_callback"] = _then(partial(self._starts.lost, task_id), options.get("error_callback"))
        self._held.append((target, args, kwargs, options))  # until this turn of the loop ends: `_tick`
        return None

    def _release_one_by_one(self) -> None:
        """An inline pool's jobs run one after another: each is checked just before it runs, or a revoke that
        arrives while an earlier one runs would be missed."""
        while self._held:
            self._store_check_and_hand_over([], [self._held.pop(0)])

    def _store_check_and_hand_over(self, results: list[Pending], held: list[Held]) -> None:
        """Store `results` and check `held` in one Redis round trip, let Celery ack (or, if the store failed,
        dead-letter) the results, and hand the jobs over with their answers (none if the check failed: then
        each child asks for itself, and meets the same error on Celery's failure path)."""
        backend = self.app.backend  # type: ignore[attr-defined]
        answers: list[starts.Answer | None] = [None] * len(held)
        error: Exception | None = None
        try:
            answers[:] = backend.ensure(backend.store_many, (ResultBatch.deferred(results), _attempts(held)))
        except Exception as exc:
            error = exc
            if held:
                logger.warning("The start check of %d job(s) failed; their children will ask: %r.", len(held), exc)
        self._batch.settle(results, error)  # type: ignore[union-attr]
        self._hand_over(held, answers)

    def _hand_over(self, held: list[Held], answers: list[starts.Answer | None]) -> None:
        for (target, args, kwargs, options), answer in zip(held, answers, strict=True):
            super().apply_async(run_deferring, (target, answer, *args), kwargs, **options)  # type: ignore[misc]


def _attempts(held: list[Held]) -> list[tuple[str, int]]:
    """(task id, retries) of held jobs, from Celery's trace arguments."""
    return [(str(args[1]), int(args[2].get("retries") or 0)) for _, args, _, _ in held]


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
    checks_in_batches = False


#: CELERY_WORKER_POOL → the pool class app/engine/install.py selects when the speed patches are on.
POOLS: dict[str, type[_BatchingPool]] = {"prefork": PreforkPool, "solo": SoloPool}
