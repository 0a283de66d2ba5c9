"""The API's publisher: Celery task messages over aiormq, with publisher confirms awaited concurrently.

Celery's own publish blocks a thread per message until RabbitMQ confirms it, so an API serving many clients
spends its time in a thread pool waiting. Here a few confirm-mode channels on one connection carry many
publishes in flight at once: each request awaits its own confirm, and the confirms are pipelined. The
message itself is built by Celery (`as_task_v2`), so workers see exactly what `apply_async` would send.

aiormq is aio-pika's protocol layer; publishing on it directly spends less CPU per confirmed message than
going through aio-pika's wrappers.

Outages: the broker going away and coming back is logged as a change of state (`broker_outage`, a
`StateChangeLog`), not per refused publish; aiormq's own ERROR line per failed connection attempt is dropped.
No future is left with an exception nobody reads: aiormq creates a confirmation future per publish and awaits
it only after the frames are written, so a publish that fails before (its connection lost, or our deadline)
leaves the confirmation orphaned, and aiormq later fails it with the connection's error. `_abandon` reads such
a confirmation when it ends, through two attributes of aiormq's Channel (aiormq 6.9, checked by
tests/test_outage_logs.py): `message_id_delivery_tag` (message id -> delivery tag) and `confirmations`
(delivery tag -> future). Without them a lost connection only costs "Future exception was never retrieved" lines.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps
from pamqp.commands import Basic

from app.config import FailoverStrategy, Settings, redact_url
from app.constants import TASK_EXCHANGE
from app.engine.speed.tracing import bounded_repr
from app.logging import StateChangeLog

logger = logging.getLogger(__name__)

#: Persistent delivery (AMQP delivery_mode 2): the message survives a broker restart.
PERSISTENT = 2

#: The broker as this process publishes to it: down (once), still down (every OUTAGE_LOG_INTERVAL_S), back (once).
broker_outage = StateChangeLog(
    logger, "The message broker", consequence="dispatches are refused with 503 and Retry-After until it is back"
)


class _NoConnectAttemptErrors(logging.Filter):
    """Drop aiormq's ERROR per failed connection attempt: `broker_outage` says it once per outage instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_NoConnectAttemptErrors())


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a finished future's outcome, so asyncio does not report an exception nobody retrieved."""
    if not future.cancelled():
        future.exception()


def _abandon(channel: AbstractChannel, message_id: str) -> None:
    """The publish of `message_id` gave up: its confirmation, if aiormq still holds it, is read when it ends."""
    tag = getattr(channel, "message_id_delivery_tag", {}).get(message_id)
    confirmation = getattr(channel, "confirmations", {}).get(tag) if tag is not None else None
    if isinstance(confirmation, asyncio.Future):
        confirmation.add_done_callback(_retrieve)


def _settle(channels: list[AbstractChannel]) -> None:
    """Channels being dropped: every confirmation they still hold is read when it ends (a safety net)."""
    for channel in channels:
        for confirmation in list(getattr(channel, "confirmations", {}).values()):
            if isinstance(confirmation, asyncio.Future):
                confirmation.add_done_callback(_retrieve)


class PublishFailed(RuntimeError):
    """The broker is unreachable, refused the message, or did not confirm it in time.

    `maybe_sent` is true when the message's frames may have reached the broker although no confirm came back: the
    deadline passed (a memory or disk alarm blocks a publisher's connection and RabbitMQ stops reading it: the
    message is read, queued and confirmed when the alarm clears) or the connection was lost under the publish. Such
    a message can still be queued after the caller was told it failed. False when the broker said no (a nack, an
    unroutable return) or no connection could be opened.
    """

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


@dataclass(frozen=True)
class TaskMessage:
    """A task message ready to publish: its body and AMQP properties."""

    body: bytes
    properties: Basic.Properties

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def timestamp(self) -> datetime | None:
        return self.properties.timestamp


class AsyncPublisher:
    """A lazily opened connection with `channels` confirm-mode channels, used round robin.

    A channel the broker closed (a channel error) is reopened on its next use; a lost connection is reopened
    on the next publish.

    Parameters:
        settings: broker URL and publish timeout.
        amqp: the Celery app's message builder (`celery_app.amqp`), so messages are exactly what `apply_async`
            would send.
        channels: confirm channels; each carries many unconfirmed publishes at once.

    Raises:
        PublishFailed: from `publish`, when a message is not confirmed.
    """

    def __init__(self, settings: Settings, amqp: Any, channels: int = 4) -> None:
        self.settings = settings
        self.amqp = amqp
        self.channel_count = channels
        self._connection: AbstractConnection | None = None
        self._channels: list[AbstractChannel] = []
        self._turn = itertools.count()
        self._lock = asyncio.Lock()
        self._hosts = BrokerHosts(settings)
        #: Channels (by index) the broker nacked a publish on: replaced on their next use (`_replace`).
        self._stale: set[int] = set()
        #: Event-loop time of the last confirm this publisher received (see `_drop_if_stuck`).
        self._last_confirm = 0.0

    async def connect(self) -> None:
        """Open the connection and its channels unless they are open (a publish opens them when needed)."""
        for _ in range(self.channel_count):
            await self._channel()

    async def _channel(self) -> AbstractChannel:
        index = next(self._turn) % self.channel_count
        if self._usable(index):
            return self._channels[index]
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._forget_connection()
                await self._open()
            elif not self._usable(index):
                old = self._channels[index]
                _settle([old])
                self._channels[index] = await self._new_channel(self._connection)
                self._stale.discard(index)
                if not old.is_closed:  # a nacked channel, still open
                    asyncio.ensure_future(old.close()).add_done_callback(_retrieve)
            return self._channels[index]

    def _forget_connection(self) -> None:
        """Drop a closed connection and its channels (their orphaned confirmations read when they end)."""
        _settle(self._channels)
        self._connection, self._channels = None, []
        self._stale.clear()

    def _usable(self, index: int) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and index < len(self._channels)
            and not self._channels[index].is_closed
            and index not in self._stale
        )

    async def _new_channel(self, connection: AbstractConnection) -> AbstractChannel:
        # on_return_raises: an unroutable message (mandatory) fails its publish instead of being confirmed.
        return await connection.channel(publisher_confirms=True, on_return_raises=True)

    async def _open(self) -> None:
        try:
            connection = await self._hosts.connect(self.settings.publish_timeout_s)
            channels = [await self._new_channel(connection) for _ in range(self.channel_count)]
        except (OSError, TimeoutError, RuntimeError, aiormq.exceptions.AMQPError) as exc:
            # (Not logged here: the dispatch that asked reports it to `broker_outage`, once per outage.)
            raise PublishFailed(f"cannot open a publishing connection: {redact_url(repr(exc))}") from exc
        self._connection, self._channels = connection, channels
        broker_outage.succeeded()  # a reopened connection ends an outage even before its first confirm

    async def publish(
        self,
        *,
        name: str,
        task_id: str,
        kwargs: dict[str, Any],
        routing_key: str,
        priority: int,
        options: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish one persistent task message and wait for RabbitMQ's confirm."""
        message = build_message(
            self.amqp, name=name, task_id=task_id, kwargs=kwargs, priority=priority, options=options, headers=headers
        )
        channel = await self._channel()
        connection, started = self._connection, asyncio.get_running_loop().time()
        try:
            # One deadline for the whole publish: aiormq's own `timeout` wraps each of its three waits in
            # asyncio.wait_for, a task apiece.
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await channel.basic_publish(
                    message.body,
                    exchange=TASK_EXCHANGE,
                    routing_key=routing_key,
                    properties=message.properties,
                    mandatory=True,
                )
        except (OSError, TimeoutError, RuntimeError, aiormq.exceptions.AMQPError, asyncio.CancelledError) as exc:
            # RuntimeError covers aiormq's ChannelInvalidStateError (a channel closed under the publish).
            _abandon(channel, message.properties.message_id or task_id)
            refused = isinstance(exc, aiormq.exceptions.DeliveryError)  # nacked, or returned: not queued
            if refused and not isinstance(exc, aiormq.exceptions.PublishError):
                self._replace(channel)  # a nack (PublishError is a returned, unroutable message: the channel is fine)
            if isinstance(exc, TimeoutError):
                self._drop_if_stuck(connection, started)
            raise PublishFailed(
                f"{name}[{task_id}] was not confirmed: {redact_url(repr(exc))}", maybe_sent=not refused
            ) from exc
        self._last_confirm = asyncio.get_running_loop().time()

    def _drop_if_stuck(self, connection: AbstractConnection | None, started: float) -> None:
        """A publish timed out and nothing at all was confirmed since it began: the node holds the connection open
        but does not answer (frozen, or cut off from the cluster), which its heartbeat would only notice minutes
        later, every dispatch meanwhile a 503. Drop the connection, so the next publish opens one to the next
        node. A busy node that still confirms other messages keeps it."""
        if connection is None or connection is not self._connection or self._last_confirm > started:
            return
        logger.warning(
            "The broker node confirmed nothing for %s s; publishing through another node.",
            self.settings.publish_timeout_s,
        )
        self._forget_connection()
        asyncio.ensure_future(connection.close()).add_done_callback(_retrieve)

    def _replace(self, channel: AbstractChannel) -> None:
        """Mark a channel whose publish the broker nacked, so its next use opens a fresh one (and closes it).

        On a cluster, a channel opened while a quorum queue's leader was being re-elected can go on being nacked
        by that queue after a new leader took over (RabbitMQ 3.10, seen in tests/cluster); a fresh channel is
        not. A nack for a full queue (reject-publish) only costs a channel reopen.
        """
        self._stale.update(index for index, held in enumerate(self._channels) if held is channel)

    async def close(self) -> None:
        """Close the connection (on API shutdown)."""
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._forget_connection()


class BrokerHosts:
    """The broker nodes the publisher connects to (Settings.broker_urls), tried in turn within one deadline.

    A connection is opened to the node after the one that served last (that one has just gone away), and the
    attempt moves on to the next node when one refuses or does not answer within its share of the time left, so a
    dead node costs a dispatch a fraction of PUBLISH_TIMEOUT_S, not all of it. With BROKER_FAILOVER_STRATEGY
    shuffle each process starts at a random node (publishers spread over the cluster); round-robin starts at the
    first. aiormq takes one URL per connection (aio-pika#141), hence this loop.
    """

    def __init__(self, settings: Settings) -> None:
        self.urls = settings.broker_urls
        shuffled = settings.broker_failover_strategy is FailoverStrategy.shuffle
        self._next = random.randrange(len(self.urls)) if shuffled else 0

    async def connect(self, timeout: float) -> AbstractConnection:
        """A connection to the first node that accepts one within `timeout` seconds in all.

        Raises:
            OSError, TimeoutError, aiormq.exceptions.AMQPError: the last node's error, when none accepted.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        error: BaseException = TimeoutError(f"no broker node answered within {timeout} s")
        failed: list[str] = []
        count = len(self.urls)
        for step in range(count):
            index = (self._next + step) % count
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                connection = await asyncio.wait_for(aiormq.connect(self.urls[index]), remaining / (count - step))
            except (OSError, TimeoutError, RuntimeError, aiormq.exceptions.AMQPError) as exc:
                error = exc
                failed.append(f"{_node(self.urls[index])} ({redact_url(repr(exc))})")
                continue
            if failed:  # (no node at all is broker_outage's to say, once per outage)
                logger.warning(
                    "The publisher connected to broker node %s; %s did not accept.",
                    _node(self.urls[index]),
                    ", ".join(failed),
                )
            self._next = (index + 1) % count  # if this one goes away, the next connection tries another first
            return connection
        raise error


def _node(url: str) -> str:
    """host:port of a broker URL (no credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


@lru_cache
def _origin() -> str:
    """What Celery puts in a message's `origin` header: this process's node name."""
    return str(anon_nodename())


def build_message(
    amqp: Any,
    *,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    priority: int,
    options: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> TaskMessage:
    """The Celery protocol-2 message `apply_async` would publish; `headers` are added to Celery's (a worker sees
    each as `task.request.<name>`). The timestamp lets RabbitMQ report the age of the oldest message in a queue.
    The message id is the task id (aiormq tracks returned messages by it). The `argsrepr`/`kwargsrepr` headers
    come from the builtin repr, and `origin` is computed once: Celery's saferepr and host lookup were a tenth of
    the publisher's time per message."""
    built = amqp.as_task_v2(
        task_id,
        name,
        args=(),
        kwargs=kwargs,
        expires=options.get("expires"),
        time_limit=options.get("time_limit"),
        soft_time_limit=options.get("soft_time_limit"),
        argsrepr=bounded_repr((), amqp.argsrepr_maxsize),
        kwargsrepr=bounded_repr(kwargs, amqp.kwargsrepr_maxsize),
        origin=_origin(),
    )
    content_type, content_encoding, body = dumps(built.body, serializer="json")
    return TaskMessage(
        body=body if isinstance(body, bytes) else body.encode(content_encoding),
        properties=Basic.Properties(
            content_type=content_type,
            content_encoding=content_encoding,
            headers={**built.headers, **(headers or {})},
            delivery_mode=PERSISTENT,
            priority=priority,
            correlation_id=built.properties.get("correlation_id") or task_id,
            reply_to=built.properties.get("reply_to") or None,
            message_id=task_id,
            timestamp=datetime.now(UTC),
        ),
    )
