"""The recorder: writes Celery task events (run history) and dead letters to SQL, in batches.

It keeps SQL off the worker's hot path. It consumes two durable queues: Celery's task events, and
`dead_letter.archive`, the dead-letter exchange's second queue (no TTL, no cap). Messages are acked only
after their batch is committed, so a recorder that is down for a while catches up when it returns, and a
dead letter reaches SQL even if RabbitMQ's `dead_letter` queue has already dropped it (TTL or cap).

Run it with ``python -m app.runs.recorder`` (``scripts/start_tasks.sh`` does).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.messaging import Consumer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.constants import TASK_META_KEY
from app.db import session_scope
from app.deadletters import service as deadletters
from app.redis_store import get_redis
from app.runs import service
from app.tasks.celery_app import celery_app
from app.tasks.topology import dead_letter_archive_queue

logger = logging.getLogger(__name__)

#: The recorder's durable queue on Celery's event exchange.
RECORDER_QUEUE = "celeryev.courier-recorder"
#: Events wait this long for a recorder that is down, then RabbitMQ drops them.
RECORDER_QUEUE_TTL_MS = 24 * 3600 * 1000
#: The queue itself goes away after a week without a consumer (a decommissioned recorder).
RECORDER_QUEUE_EXPIRES_MS = 7 * 24 * 3600 * 1000


def recorder_queue() -> Queue:
    """Durable queue bound to every task event (`task.#`) on the `celeryev` topic exchange."""
    return Queue(
        RECORDER_QUEUE,
        Exchange("celeryev", type="topic", durable=True),
        routing_key="task.#",
        durable=True,
        auto_delete=False,
        queue_arguments={"x-message-ttl": RECORDER_QUEUE_TTL_MS, "x-expires": RECORDER_QUEUE_EXPIRES_MS},
    )


class Recorder:
    """Buffers events and flushes them every `history_flush_interval_s` or `history_batch_size` events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buffer: list[dict[str, Any]] = []
        self.messages: list[Message] = []
        self.dead: list[Message] = []
        self.running = True
        celery_app.loader.import_default_modules()

    def on_message(self, body: Any, message: Message) -> None:
        """Collect one event message (the worker may batch several events in one list)."""
        events = body if isinstance(body, list) else [body]
        self.buffer.extend(e for e in events if isinstance(e, dict))
        self.messages.append(message)

    def on_dead_letter(self, message: Message) -> None:
        """Collect one raw dead-lettered message (not decoded: it may be malformed)."""
        self.dead.append(message)
        self.messages.append(message)

    def flush(self) -> None:
        """Write buffered events and dead letters in one transaction, then ack their messages."""
        if not self.messages:
            return
        meta = self._meta({str(e["uuid"]) for e in self.buffer if e.get("type") == "task-received" and e.get("uuid")})
        with session_scope() as session:
            written = service.record_events(session=session, events=self.buffer, meta=meta)
            for message in self.dead:
                self._record_dead_letter(session, message)
        for message in self.messages:
            message.ack()
        logger.debug(
            "Recorded %d event(s) into %d run(s), %d dead letter(s).", len(self.buffer), written, len(self.dead)
        )
        self.buffer, self.messages, self.dead = [], [], []

    @staticmethod
    def _record_dead_letter(session: Session, message: Message) -> None:
        headers = dict(message.headers or {})
        task_id = headers.get("id")
        backend_meta = celery_app.backend.get_task_meta(str(task_id)) if task_id else {}
        incoming = deadletters.Incoming(
            body=message.body if isinstance(message.body, bytes) else str(message.body).encode(),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            properties={k: v for k, v in (message.properties or {}).items() if k != "application_headers"},
        )
        try:
            with session.begin_nested():
                deadletters.record(session=session, incoming=incoming, registered=celery_app.tasks, meta=backend_meta)
        except Exception:  # never let one odd stored result wedge the recorder: record the letter without it
            logger.exception("Recording dead letter of task %s failed; recording it without its result.", task_id)
            with session.begin_nested():
                deadletters.record(session=session, incoming=incoming, registered=celery_app.tasks, meta={})

    @staticmethod
    def _meta(task_ids: set[str]) -> dict[str, dict[str, str]]:
        """Tier and triggering key written by the publisher, read in one Redis round trip."""
        if not task_ids:
            return {}
        ordered = sorted(task_ids)
        pipe = get_redis().pipeline(transaction=False)
        for task_id in ordered:
            pipe.hgetall(TASK_META_KEY.format(task_id=task_id))
        return {task_id: values for task_id, values in zip(ordered, pipe.execute(), strict=True) if values}

    def run(self) -> None:
        """Consume until SIGTERM/SIGINT, reconnecting after broker or database errors."""
        while self.running:
            try:
                self._consume()
            except Exception:
                logger.exception("The recorder lost its connection; retrying in 2 s.")
                self.buffer, self.messages, self.dead = [], [], []  # unacked messages are redelivered
                time.sleep(2)

    def _consume(self) -> None:
        interval = self.settings.history_flush_interval_s
        with Connection(self.settings.broker_url, heartbeat=30) as conn:
            channel = conn.channel()
            channel.basic_qos(0, self.settings.history_batch_size * 2, False)
            events = Consumer(channel, [recorder_queue()], callbacks=[self.on_message], accept=["json"])
            dead = Consumer(channel, [dead_letter_archive_queue(self.settings)], on_message=self.on_dead_letter)
            with events, dead:
                logger.info("The run-history recorder is consuming %s.", RECORDER_QUEUE)
                deadline = time.monotonic() + interval
                while self.running:
                    try:
                        conn.drain_events(timeout=max(0.01, deadline - time.monotonic()))
                    except TimeoutError:  # nothing arrived this interval
                        pass
                    if len(self.buffer) >= self.settings.history_batch_size or time.monotonic() >= deadline:
                        self.flush()
                        conn.heartbeat_check()
                        deadline = time.monotonic() + interval
                self.flush()

    def stop(self, *_: object) -> None:
        """Finish the current batch and exit."""
        self.running = False


def main() -> None:
    """Entry point of `python -m app.runs.recorder`."""
    from app.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    recorder = Recorder(settings)
    signal.signal(signal.SIGTERM, recorder.stop)
    signal.signal(signal.SIGINT, recorder.stop)
    recorder.run()


if __name__ == "__main__":
    main()
