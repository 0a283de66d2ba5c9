"""The API's publisher: Celery task messages over aio-pika, with publisher confirms awaited concurrently.

Celery's own publish blocks a thread per message until RabbitMQ confirms it, so an API serving many clients
spends its time in a thread pool waiting. Here a few confirm-mode channels on one connection carry many
publishes in flight at once: each request awaits its own confirm, and the confirms are pipelined. The
message itself is built by Celery (`as_task_v2`), so workers see exactly what `apply_async` would send.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from kombu.serialization import dumps

from app.config import Settings
from app.constants import TASK_EXCHANGE
from app.tasks.celery_app import celery_app

logger = logging.getLogger(__name__)


class PublishFailed(RuntimeError):
    """The broker is unreachable, refused the message, or did not confirm it in time."""


class AsyncPublisher:
    """A lazily opened connection with `channels` confirm-mode channels, used round robin.

    Parameters:
        settings: broker URL and publish timeout.
        channels: confirm channels; each carries many unconfirmed publishes at once.

    Raises:
        PublishFailed: from `publish`, when a message is not confirmed.
    """

    def __init__(self, settings: Settings, channels: int = 4) -> None:
        self.settings = settings
        self.channel_count = channels
        self._connection: AbstractRobustConnection | None = None
        self._exchanges: list[AbstractExchange] = []
        self._next: itertools.cycle[AbstractExchange] | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> itertools.cycle[AbstractExchange]:
        if self._next is not None and self._connection is not None and not self._connection.is_closed:
            return self._next
        async with self._lock:
            if self._next is None or self._connection is None or self._connection.is_closed:
                await self._open()
            assert self._next is not None
            return self._next

    async def _open(self) -> None:
        timeout = self.settings.publish_timeout_s
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(self.settings.broker_url, timeout=timeout), timeout
            )
            exchanges = []
            for _ in range(self.channel_count):
                channel = await connection.channel(publisher_confirms=True)
                exchanges.append(await channel.get_exchange(TASK_EXCHANGE, ensure=False))
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPException) as exc:
            raise PublishFailed(f"cannot open a publishing connection: {exc!r}") from exc
        self._connection, self._exchanges = connection, exchanges
        self._next = itertools.cycle(exchanges)

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
            name=name, task_id=task_id, kwargs=kwargs, priority=priority, options=options, headers=headers
        )
        exchanges = await self._ensure()
        try:
            confirmation = await next(exchanges).publish(
                message, routing_key=routing_key, timeout=self.settings.publish_timeout_s
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPException, asyncio.CancelledError) as exc:
            raise PublishFailed(f"{name}[{task_id}] was not confirmed: {exc!r}") from exc
        if confirmation is not None and type(confirmation).__name__ != "Ack":
            raise PublishFailed(f"{name}[{task_id}] was refused by the broker ({type(confirmation).__name__})")

    async def close(self) -> None:
        """Close the connection (on API shutdown)."""
        if self._connection is not None:
            await self._connection.close()
        self._connection, self._next = None, None


def build_message(
    *,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    priority: int,
    options: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> aio_pika.Message:
    """The Celery protocol-2 message `apply_async` would publish, as an aio-pika message; `headers` are added to
    Celery's (a worker sees each as `task.request.<name>`). The timestamp lets RabbitMQ report the age of the
    oldest message in a queue."""
    built = celery_app.amqp.as_task_v2(
        task_id,
        name,
        args=(),
        kwargs=kwargs,
        expires=options.get("expires"),
        time_limit=options.get("time_limit"),
        soft_time_limit=options.get("soft_time_limit"),
    )
    content_type, content_encoding, body = dumps(built.body, serializer="json")
    return aio_pika.Message(
        body=body if isinstance(body, bytes) else body.encode(content_encoding),
        headers={**built.headers, **(headers or {})},
        content_type=content_type,
        timestamp=datetime.now(UTC),
        content_encoding=content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
        correlation_id=built.properties.get("correlation_id") or task_id,
        reply_to=built.properties.get("reply_to") or None,
    )
