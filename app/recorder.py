"""The recorder: writes the run-history journal and dead letters to SQL, in batches.

It keeps SQL off the worker's hot path. It reads two durable sources: the history journal, a Redis stream the
workers append to (app/runs/journal.py), through a consumer group; and `dead_letter.archive`, the
dead-letter exchange's second queue (no TTL, no cap). Both are acknowledged only after their batch is
committed, so a recorder that is down for a while catches up when it returns, and a dead letter reaches SQL
even if RabbitMQ's `dead_letter` queue has already dropped it (TTL or cap).

Run it with ``python -m app.recorder`` (``scripts/start_tasks.sh`` does). Run one per deployment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import amqp.exceptions
import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.message import Message
from kombu.messaging import Consumer
from sqlalchemy.orm import Session

from app import redis_store, tasks
from app.config import Settings, get_settings
from app.constants import HISTORY_GROUP, HISTORY_STREAM, RECORDER_HEARTBEAT_KEY, TASK_META_KEY
from app.db import OUTAGE_ERRORS as DATABASE_DOWN
from app.db import session_scope
from app.deadletters import service as deadletters
from app.engine import dead_letters
from app.engine.celery_app import celery_app
from app.engine.topology import dead_letter_archive_queue
from app.logging import StateChangeLog, configure_logging
from app.rabbitmq import broker_connection, connect_any
from app.redis_store import get_redis
from app.runs import journal, service

logger = logging.getLogger(__name__)

#: Errors of a service that is down (refused, reset, timed out, read-only), logged as an outage, not a crash.
REDIS_DOWN: tuple[type[Exception], ...] = redis_store.OUTAGE_ERRORS
BROKER_DOWN: tuple[type[Exception], ...] = (KombuOperationalError, amqp.exceptions.ConnectionError, OSError)

#: The consumer's name in HISTORY_GROUP: fixed, so a restarted recorder takes over its own pending entries.
CONSUMER = "recorder"
#: Longest wait on the broker's socket (for dead letters) before the recorder beats and looks at the clock again.
POLL_MS = 100
#: Seconds between two heartbeats of a running recorder (read by `--check`).
HEARTBEAT_S = 0.5


class Recorder:
    """Buffers journal entries and dead letters; flushes every `history_flush_interval_s` or batch size."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buffer: list[dict[str, Any]] = []
        self.entry_ids: list[str] = []
        self.messages: list[Message] = []
        self.dead: list[Message] = []
        self.running = True
        self._last_beat = float("-inf")
        consequence = "runs and dead letters wait, and are recorded when it is back"
        self.outages = {
            "redis": StateChangeLog(logger, "Redis", consequence=consequence),
            "database": StateChangeLog(logger, "The database", consequence=consequence),
            "broker": StateChangeLog(logger, "The message broker", consequence=consequence),
        }
        celery_app.loader.import_default_modules()

    def on_dead_letter(self, message: Message) -> None:
        """Collect one raw dead-lettered message (not decoded: it may be malformed)."""
        self.dead.append(message)
        self.messages.append(message)

    def on_undecodable_letter(self, message: Message, exc: Exception) -> None:
        """A dead letter kombu could not even build (a `compression` header naming no codec it has, or a body that
        does not decompress): kept with its body as it came. Without this, kombu raised out of the recorder's
        consumer, the letter was redelivered to it, and the recorder retried it every 2 s forever, recording
        nothing after it."""
        logger.warning("Recording a dead letter whose body kombu could not decompress as it came: %r.", exc)
        self.on_dead_letter(message)

    def read_journal(self, pending: bool, block_ms: int | None) -> int:
        """Take up to a batch of journal entries (this consumer's unacknowledged ones when `pending`)."""
        room = max(1, self.settings.history_batch_size - len(self.buffer))
        answer: Any = get_redis().xreadgroup(
            HISTORY_GROUP, CONSUMER, {HISTORY_STREAM: "0" if pending else ">"}, count=room, block=block_ms
        )
        taken = 0
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                self.entry_ids.append(entry_id)
                self.buffer.extend(journal.decode(fields or {}))
                taken += 1
        return taken

    def flush(self) -> None:
        """Write buffered entries and dead letters in one transaction, then acknowledge them."""
        if not self.entry_ids and not self.messages:
            return
        meta = self._meta(self.buffer)
        with session_scope() as session:
            written = service.record_events(session=session, events=self.buffer, meta=meta)
            for message in self.dead:
                self._record_dead_letter(session, message)
        self.outages["database"].succeeded()
        if self.entry_ids:
            pipe = get_redis().pipeline(transaction=False)
            pipe.xack(HISTORY_STREAM, HISTORY_GROUP, *self.entry_ids)
            pipe.xdel(HISTORY_STREAM, *self.entry_ids)
            pipe.execute()
        for message in self.messages:
            message.ack()
        logger.debug(
            "Recorded %d entries into %d run(s), %d dead letter(s).", len(self.entry_ids), written, len(self.dead)
        )
        self.buffer, self.entry_ids, self.messages, self.dead = [], [], [], []

    @staticmethod
    def _record_dead_letter(session: Session, message: Message) -> None:
        headers = dict(message.headers or {})
        task_id = headers.get("id")
        backend_meta = celery_app.backend.get_task_meta(str(task_id)) if task_id else {}
        incoming = dead_letters.Incoming(
            body=message.body if isinstance(message.body, bytes) else str(message.body).encode(),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            properties={k: v for k, v in (message.properties or {}).items() if k != "application_headers"},
        )
        # Never let one letter wedge the recorder: an odd stored result is left out, then an odd message is kept
        # as its raw body only (a malformed letter). A database outage is not the letter's: the batch waits (`run`).
        readings: tuple[Callable[[], deadletters.Arrival], ...] = (
            lambda: dead_letters.arrival(incoming, registered=celery_app.tasks, meta=backend_meta),
            lambda: dead_letters.arrival(incoming, registered=celery_app.tasks, meta={}),
            lambda: dead_letters.bare_arrival(incoming),
        )
        for attempt, reading in enumerate(readings, 1):
            try:
                with session.begin_nested():
                    deadletters.record(session=session, arrival=reading())
                return
            except DATABASE_DOWN:
                raise
            except Exception:
                if attempt == len(readings):
                    raise
                logger.exception(
                    "Recording dead letter of task %s failed; recording it %s.",
                    task_id,
                    "without its result" if attempt == 1 else "as its raw body only",
                )

    @staticmethod
    def _meta(events: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        """Tier, triggering key and dispatch time of each started run: from the journal entry, which carries the
        publisher's message headers, else (a message published without them) from Redis in one round trip, as for
        a run revoked before it started (also its name)."""
        meta: dict[str, dict[str, str]] = {}
        missing: set[str] = set()
        for event in events:
            if not event.get("uuid"):
                continue
            if event.get("type") == "task-revoked":
                # A run that never started (revoked, or its message expired) has no start entry to carry the
                # publisher's meta: without this lookup its row had no name, tier or triggering key, so no
                # filter found it and its client could no longer read it once the meta expired from Redis.
                missing.add(str(event["uuid"]))
                continue
            if event.get("type") != "task-started":
                continue
            if "triggered_by" in event and "dispatched_at" in event and event.get("tier"):
                meta[str(event["uuid"])] = {k: str(event[k]) for k in ("tier", "triggered_by", "dispatched_at")}
            else:
                missing.add(str(event["uuid"]))
        if not missing:
            return meta
        ordered = sorted(missing)
        pipe = get_redis().pipeline(transaction=False)
        for task_id in ordered:
            pipe.hgetall(TASK_META_KEY.format(task_id=task_id))
        found = {task_id: values for task_id, values in zip(ordered, pipe.execute(), strict=True) if values}
        meta.update({task_id: values for task_id, values in found.items() if task_id not in meta})
        return meta

    def run(self) -> None:
        """Consume until SIGTERM/SIGINT, reconnecting after broker, Redis or database errors."""
        while self.running:
            try:
                self._consume()
            except (*REDIS_DOWN, *DATABASE_DOWN, *BROKER_DOWN) as exc:
                # A service that is down: a line when it goes, one every OUTAGE_LOG_INTERVAL_S, one when it is back
                # (once a whole round succeeds), not an ERROR with a traceback every 2 s for as long as it lasts.
                self._outage(exc).failed(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                self._retry_soon()
            except Exception:
                logger.exception("The recorder failed; retrying in 2 s.")
                self._retry_soon()

    def _outage(self, exc: Exception) -> StateChangeLog:
        """The outage log of the service that raised `exc`."""
        if isinstance(exc, REDIS_DOWN):
            return self.outages["redis"]
        return self.outages["database" if isinstance(exc, DATABASE_DOWN) else "broker"]

    def _retry_soon(self) -> None:
        # Nothing was acknowledged: the broker redelivers the dead letters, the journal keeps the entries.
        self.buffer, self.entry_ids, self.messages, self.dead = [], [], [], []
        time.sleep(2)

    def _consume(self) -> None:
        interval = self.settings.history_flush_interval_s
        _ensure_group()
        with broker_connection(self.settings, heartbeat=30) as conn:
            channel = connect_any(conn, self.settings).channel()
            channel.basic_qos(0, self.settings.history_batch_size * 2, False)
            dead = Consumer(
                channel,
                [dead_letter_archive_queue(self.settings)],
                on_message=self.on_dead_letter,
                on_decode_error=self.on_undecodable_letter,
            )
            with dead:
                if not any(outage.down for outage in self.outages.values()):  # (else its return says so, once)
                    logger.info("The run-history recorder is reading %s and the dead-letter archive.", HISTORY_STREAM)
                # First what this consumer took before a crash or restart and never acknowledged.
                while self.running and self.read_journal(pending=True, block_ms=None):
                    self._beat()
                    self.flush()
                deadline = time.monotonic() + interval
                while self.running:
                    self._beat()
                    wait = deadline - time.monotonic()
                    if wait > 0:
                        # Until the next flush, wait on the broker's socket for dead letters. Polling the journal
                        # in between took a few entries per round trip and cost the recorder about half its CPU.
                        try:
                            conn.drain_events(timeout=min(wait, POLL_MS / 1000))
                        except TimeoutError:
                            pass
                        continue
                    # Then everything the journal holds, a batch at a time.
                    while self.running and self.read_journal(pending=False, block_ms=None):
                        if len(self.buffer) >= self.settings.history_batch_size:
                            self.flush()
                    self.flush()
                    conn.heartbeat_check()
                    # A whole round read Redis and the broker (the database says so in `flush`, when it writes).
                    self.outages["redis"].succeeded()
                    self.outages["broker"].succeeded()
                    deadline = time.monotonic() + interval
                self.flush()

    def _beat(self) -> None:
        """Say this recorder is going round its loop (Redis 7.0 does not refresh a consumer's idle time on a
        blocking read that finds nothing, so the consumer group cannot tell an idle recorder from a dead one)."""
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_S:
            get_redis().set(RECORDER_HEARTBEAT_KEY, repr(time.time()), ex=60)
            self._last_beat = now

    def stop(self, *_: object) -> None:
        """Finish the current batch and exit."""
        self.running = False


def _ensure_group() -> None:
    """Create the consumer group (and the stream) once; from the start of the stream, so nothing is skipped."""
    try:
        get_redis().xgroup_create(HISTORY_STREAM, HISTORY_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_alive(max_idle_s: float = 30.0) -> bool:
    """Whether a recorder is reading the journal: it went round its loop within `max_idle_s` (a running one
    beats every HEARTBEAT_S, with or without work)."""
    try:
        beat = get_redis().get(RECORDER_HEARTBEAT_KEY)
    except redis.RedisError:
        return False
    return beat is not None and time.time() - float(beat) < max_idle_s


def main() -> None:
    """Entry point of `python -m app.recorder` (`--check`: exit 0 if a recorder is alive, for healthchecks)."""
    if sys.argv[1:] == ["--check"]:
        alive = is_alive()
        # (a healthcheck's command: its output is what an operator reads in `docker inspect`, not a log)
        sys.stdout.write(
            "A recorder is reading the run-history journal.\n"
            if alive
            else "No recorder has read the run-history journal in the last 30 s (or Redis is unreachable): is "
            "`python -m app.recorder` running?\n"
        )
        sys.exit(0 if alive else 1)
    settings = get_settings()
    configure_logging(settings.log_level)
    try:  # a Redis that persists nothing: refused in production, a loud warning elsewhere (README)
        redis_store.check_persistence_at_start(settings, process="recorder")
    except redis_store.PersistenceRefused as exc:
        logger.critical("%s", exc)
        sys.exit(78)  # EX_CONFIG, as a refused worker
    if settings.history_recorder_nice:
        # Work behind the workers: under load they get the CPU first, and the recorder catches up afterwards.
        os.nice(settings.history_recorder_nice)
    tasks.install_publisher()  # a recorded dead letter emits `task.dead_lettered`: its webhook deliveries publish
    recorder = Recorder(settings)
    signal.signal(signal.SIGTERM, recorder.stop)
    signal.signal(signal.SIGINT, recorder.stop)
    recorder.run()


if __name__ == "__main__":
    main()
