"""Changing the queue type (QUEUE_TYPE classic -> quorum, or back) without losing a message.

RabbitMQ cannot change a queue's type or max priority in place, so each queue whose live declare-time arguments
differ from the configuration's is rebuilt in four steps:

1. drain: every message is moved into a holding queue of the new type (`<name>.migrating`), one confirmed
   publish per message, each original acked only after the broker confirmed its copy;
2. delete the old queue, only if it is empty (a message that arrived meanwhile is drained first);
3. declare the queue with the new arguments and its binding;
4. move the messages back from the holding queue, then delete it.

A message is always in at least one queue: a crash between any two steps leaves it in the old queue or in the
holding queue, and running the command again finishes the job (a holding queue left behind is emptied into the
new queue). A message may be copied twice if the process dies between a confirm and its ack: a duplicate task
message is what at-least-once delivery already allows (the run's idempotent effects cover it).

Workers must be stopped first: a consumer on a queue being rebuilt would be cancelled when it is deleted. The
command refuses while any queue to migrate has consumers. Publishes to a tier in the moment between its delete
and its declare are unroutable and refused (the API answers 503, the client retries); nothing is half-done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
from kombu.entity import Queue

from app.config import Settings
from app.engine import topology
from app.rabbitmq import ManagementClient

logger = logging.getLogger(__name__)

#: The holding queue of a queue being migrated.
HOLDING_QUEUE = "{name}.migrating"
#: Attempts at the drain-then-delete step when messages keep arriving.
DELETE_ATTEMPTS = 5


class MigrationRefused(RuntimeError):
    """The migration cannot start safely (consumers attached); nothing was changed."""


@dataclass(frozen=True)
class Migrated:
    """One queue rebuilt: its name, the arguments it had, and how many messages were carried over."""

    name: str
    before: dict[str, Any]
    messages: int


def migrate(settings: Settings) -> list[Migrated]:
    """Rebuild every queue whose type or priority differs from the configuration, keeping every message; then
    declare the whole topology. Idempotent: with nothing to change it only declares.

    Raises:
        MigrationRefused: a queue to migrate has consumers (stop the workers first).
        ManagementError, amqp.exceptions.AMQPError, OSError: the broker failed mid-way; run it again.
    """
    with ManagementClient.for_broker_user(settings) as client:
        live = {q["name"]: q for q in client.queues(settings.broker_vhost)}
        for policy in topology.policies(settings):
            client.put_policy(
                settings.broker_vhost,
                policy.name,
                pattern=policy.pattern,
                definition=policy.definition,
                priority=topology.POLICY_PRIORITY,
            )
    wanted = {queue.name: queue for queue in topology.queues(settings)}
    stale = [wanted[name] for name in wanted if name in live and _differs(live[name], wanted[name])]
    leftovers = [wanted[name] for name in wanted if HOLDING_QUEUE.format(name=name) in live]
    connection = _connect(settings)
    try:
        _refuse_consumers(connection, stale)
        return _rebuild_all(connection, settings, stale, leftovers, live)
    finally:
        connection.collect()


def _refuse_consumers(connection: amqp.Connection, stale: list[Queue]) -> None:
    """MigrationRefused when a queue to rebuild has consumers (counted over AMQP: the management stats lag)."""
    channel = connection.channel()
    busy = []
    for queue in stale:
        _, _, consumers = channel.queue_declare(queue.name, passive=True)
        if consumers:
            busy.append(f"{queue.name} ({consumers} consumer(s))")
    channel.close()
    if busy:
        raise MigrationRefused(f"stop the workers first: {', '.join(busy)} would be cancelled mid-migration")


def _rebuild_all(
    connection: amqp.Connection,
    settings: Settings,
    stale: list[Queue],
    leftovers: list[Queue],
    live: dict[str, dict[str, Any]],
) -> list[Migrated]:
    done: list[Migrated] = []
    for queue in stale:
        before = _fixed(live[queue.name].get("arguments") or {})
        moved = _rebuild(connection, queue, settings, live)
        logger.info("Migrated queue %r from %s: %d message(s) kept.", queue.name, before or "classic", moved)
        done.append(Migrated(queue.name, before, moved))
    for queue in leftovers:  # a holding queue a crashed run left: empty it into the queue (declared below)
        if queue.name not in {m.name for m in done}:
            channel = connection.channel()
            _declare(channel, queue)
            done.append(Migrated(queue.name, {}, _empty_holding(channel, queue)))
            channel.close()
    topology.declare(settings)
    return done


def _differs(live: dict[str, Any], queue: Queue) -> bool:
    return _fixed(live.get("arguments") or {}) != _fixed(_arguments(queue))


def _arguments(queue: Queue) -> dict[str, Any]:
    return dict(getattr(queue, "queue_arguments", None) or {})


def _fixed(arguments: dict[str, Any]) -> dict[str, Any]:
    found = {key: value for key, value in arguments.items() if key in topology.FIXED_ARGUMENTS}
    if found.get("x-queue-type") == "classic":
        found.pop("x-queue-type")
    return found


def _connect(settings: Settings) -> amqp.Connection:
    """A py-amqp connection to the first broker node that accepts one."""
    error: Exception = RuntimeError("no broker URL")
    for url in settings.broker_urls:
        parts = urlsplit(url)
        connection = amqp.Connection(
            host=f"{parts.hostname}:{parts.port or 5672}",
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            virtual_host=unquote(parts.path.lstrip("/")) or "/",
            connect_timeout=settings.publish_timeout_s,
            confirm_publish=True,
        )
        try:
            connection.connect()
        except (OSError, amqp.exceptions.AMQPError) as exc:
            error = exc
            continue
        return connection
    raise error


def _rebuild(connection: amqp.Connection, queue: Queue, settings: Settings, live: dict[str, dict[str, Any]]) -> int:
    """Drain, delete, declare, refill one queue (module docstring); how many messages it held. Each channel is
    used for one queue only (connection's confirm_publish: each basic_publish waits for its confirm)."""
    channel = connection.channel()
    holding = HOLDING_QUEUE.format(name=queue.name)
    # The holding queue: the new type, no TTL, no dead-lettering (a delay queue's messages must not fire early).
    channel.queue_declare(holding, durable=True, auto_delete=False, arguments=topology.queue_arguments(settings, None))
    moved = 0
    for _ in range(DELETE_ATTEMPTS):
        moved += _move(channel, queue.name, holding)
        if _delete_if_empty(channel.connection, queue.name, classic=_is_classic(queue.name, live)):
            break
    else:
        raise RuntimeError(f"queue {queue.name!r} kept receiving messages; stop the API and run the migration again")
    _declare(channel, queue)
    # A fresh channel for the way back: RabbitMQ 3.10 crashes a channel that publishes to a queue it knew under
    # its old type (function_clause in rabbit_classic_queue:update).
    fresh = _reopen(channel)
    channel.close()
    _empty_holding(fresh, queue)
    fresh.close()
    return moved


def _delete_if_empty(connection: amqp.Connection, name: str, *, classic: bool) -> bool:
    """Delete queue `name` if it holds no message; whether it did. A classic queue is deleted `if-empty`
    (atomic: a message that has just arrived keeps it); quorum queues refuse that flag, so for them the count read
    first decides (the API should be stopped while a quorum queue goes back to classic: a publish between the
    count and the delete would go with the queue)."""
    channel = connection.channel()
    try:
        _, ready, _ = channel.queue_declare(name, passive=True)
        if ready:
            return False
        try:
            channel.queue_delete(name, if_empty=classic)
        except amqp.exceptions.PreconditionFailed:  # not empty after all: drain again
            return False
        return True
    finally:
        if channel.is_open:
            channel.close()


def _quorum(queue: Queue) -> bool:
    return _arguments(queue).get("x-queue-type") == "quorum"


def _is_classic(name: str, live: dict[str, dict[str, Any]]) -> bool:
    return bool(live.get(name, {}).get("type", "classic") == "classic")


def _reopen(channel: amqp.Channel) -> amqp.Channel:
    fresh: amqp.Channel = channel.connection.channel()
    return fresh


def _declare(channel: amqp.Channel, queue: Queue) -> None:
    channel.exchange_declare(queue.exchange.name, queue.exchange.type, durable=True, auto_delete=False)
    channel.queue_declare(queue.name, durable=True, auto_delete=False, arguments=_arguments(queue))
    channel.queue_bind(queue.name, queue.exchange.name, routing_key=queue.routing_key or "")


def _empty_holding(channel: amqp.Channel, queue: Queue) -> int:
    holding = HOLDING_QUEUE.format(name=queue.name)
    moved = _move(channel, holding, queue.name)
    if not _delete_if_empty(channel.connection, holding, classic=not _quorum(queue)):
        raise RuntimeError(f"holding queue {holding!r} is not empty after the move; run the migration again")
    return moved


def _move(channel: amqp.Channel, source: str, target: str) -> int:
    """Move every message of `source` to `target` (default exchange), each acked after its copy is confirmed."""
    moved = 0
    while (message := channel.basic_get(source, no_ack=False)) is not None:
        copy = amqp.Message(message.body, **message.properties)
        channel.basic_publish(copy, exchange="", routing_key=target, mandatory=True)  # waits for the confirm
        channel.basic_ack(message.delivery_tag)
        moved += 1
    return moved
