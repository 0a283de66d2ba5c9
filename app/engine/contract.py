"""The engine's contract with Celery, kombu, py-amqp, billiard, redis-py and aiormq, as data.

Each `Override` names the upstream symbols it subclasses, overrides, calls, reads or patches, with the shape it
relies on, why it exists and what happens when it is off. tests/engine/test_upstream_contract.py checks every
symbol against the installed packages; app/engine/README.md's table is `markdown()` of this list (the test
checks that too: regenerate it with `python -m app.engine.contract`).

A symbol is "module:attribute.path". Shapes:
- `class`: a class; `callable`: callable, with at least `params` among its parameters (the ones the override
  passes, or overrides with the same names);
- `attribute`: exists (a class or module attribute); `mapping`: a dict the override writes to;
- `instance`: an instance attribute, assigned as `self.<name> =` in the owning class's source;
- `source`: the symbol's source contains `source` (a name looked up at call time, a call's arguments).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

Shape = Literal["class", "callable", "attribute", "mapping", "instance", "source"]

#: The versions the overrides were written against (what `pip show` reported); pyproject.toml pins the minors.
WRITTEN_AGAINST = {
    "celery": "5.7.0",
    "kombu": "5.7.0",
    "amqp": "5.4.2",
    "billiard": "4.3.2",
    "redis": "8.1.0",
    "aiormq": "6.9.4",
    "pamqp": "3.3.0",
}


@dataclass(frozen=True)
class Symbol:
    """One upstream name an override relies on, and the shape it relies on."""

    package: str
    name: str
    shape: Shape
    params: tuple[str, ...] = ()
    source: str = ""

    @property
    def module(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def path(self) -> list[str]:
        return self.name.split(":", 1)[1].split(".")


@dataclass(frozen=True)
class Override:
    """One of Courier's overrides: where it is, what upstream it touches, why, and what happens when it is off."""

    name: str
    layer: Literal["guarantees", "speed", "wiring"]
    why: str
    off: str
    symbols: tuple[Symbol, ...] = field(default_factory=tuple)


def _s(package: str, name: str, shape: Shape, *params: str, source: str = "") -> Symbol:
    return Symbol(package, name, shape, tuple(params), source)


OVERRIDES: tuple[Override, ...] = (
    # --- guarantees: run in both engine modes ---------------------------------------------------------------
    Override(
        "app.engine.guarantees.request:CourierRequest",
        "guarantees",
        "a hard time limit or an expired message is rejected to the dead-letter exchange, not acked; a Redis outage "
        "on the worker's path is retried with backoff, then dead-lettered `infra_unavailable`; a `timelimit` header "
        "that is not [hard, soft] seconds, or a body whose args, kwargs or embed have the wrong type, is refused as "
        "the message arrives (dead letter `malformed`)",
        "stock Celery acks both: the message is lost; an outage would fail the task; a bad `timelimit` raises when "
        "the task is handed to the pool, from the event loop when the pool was full, which stops the worker; kwargs "
        "that are not a mapping are traced as a success and the message acked",
        (
            _s("celery", "celery.worker.request:Request", "class"),
            _s("celery", "celery.worker.request:Request.__init__", "callable", "message", "headers"),
            _s("celery", "celery.worker.request:Request", "instance", source="_request_dict"),
            _s("celery", "celery.worker.request:Request", "instance", source="_kwargs"),
            _s("celery", "celery.worker.request:Request", "instance", source="_decoded"),
            _s("celery", "celery.worker.request:Request.time_limits", "attribute"),
            _s("celery", "celery.exceptions:InvalidTaskError", "class"),
            _s("celery", "celery.worker.request:Request.on_timeout", "callable", "soft", "timeout"),
            _s(
                "celery",
                "celery.worker.request:Request.on_failure",
                "callable",
                "exc_info",
                "send_failed_event",
                "return_ok",
            ),
            _s(
                "celery",
                "celery.worker.request:Request._announce_revoked",
                "callable",
                "reason",
                "terminated",
                "signum",
                "expired",
            ),
            _s("celery", "celery.worker.request:Request.acknowledge", "callable"),
            _s("celery", "celery.worker.request:Request.reject", "callable", "requeue"),
            _s("celery", "celery.worker.request:Request._context", "attribute"),
            _s("celery", "celery.worker.request:Request", "instance", source="_message"),
            _s("celery", "celery.worker.state:task_ready", "callable", "request"),
            _s("celery", "celery.app.task:Task.Request", "attribute"),
            _s("billiard", "billiard.exceptions:TimeLimitExceeded", "class"),
        ),
    ),
    Override(
        "app.engine.guarantees.consumer:CourierConsumer",
        "guarantees",
        "an undecodable body, or a task header without an id, is rejected to the dead-letter exchange; Celery's "
        "native delayed delivery is left out (Courier retries through its own delay queues)",
        "stock Celery acks (drops) an undecodable body; a header without an id raises out of the consumer and "
        "stops every worker that takes the message; on quorum queues Celery declares 28 unused celery_delayed_* "
        "queues and warns that a direct exchange cannot use them",
        (
            _s("celery", "celery.worker.consumer.consumer:Consumer", "class"),
            _s("celery", "celery.worker.consumer.consumer:Consumer.on_decode_error", "callable", "message", "exc"),
            _s("celery", "celery.worker.consumer.consumer:Consumer.create_task_handler", "callable", "promise"),
            _s("kombu", "kombu.message:Message.reject_log_error", "callable", "logger", "errors"),
            _s("kombu", "kombu.message:Message.acknowledged", "attribute"),
            _s(
                "celery",
                "celery.worker.consumer.consumer:Consumer.Blueprint",
                "class",
                source="celery.worker.consumer.delayed_delivery:DelayedDelivery",
            ),
        ),
    ),
    Override(
        "app.engine.guarantees.sending:CourierAMQP",
        "guarantees",
        "every task message is published mandatory, publishers declare no queue, and the attempt's HandOff (a "
        "request key) never leaves the process as a header",
        "stock Celery confirms and drops a message RabbitMQ cannot route, and re-creates a deleted queue unnoticed",
        (
            _s("celery", "celery.app.amqp:AMQP", "class"),
            _s("celery", "celery.app.amqp:AMQP._create_task_sender", "callable"),
            _s("celery", "celery.app.amqp:AMQP._create_task_sender", "source", source="declare=None"),
            _s("celery", "celery.app.amqp:AMQP._create_task_sender", "source", source="**properties"),
            _s("kombu", "kombu.messaging:Producer.publish", "callable", "mandatory", "declare"),
            _s(
                "celery",
                "celery.app.task:Context._get_custom_headers",
                "source",
                source="headers.update(*args, **kwargs)",
            ),
            _s("celery", "celery.app.task:Context.as_execution_options", "source", source="'headers'"),
            _s("celery", "celery.app.base:Celery.__init__", "callable", "amqp"),
        ),
    ),
    Override(
        "app.engine.guarantees.returns:Transport",
        "guarantees",
        "a mandatory publish RabbitMQ returned raises `Unroutable` once its own confirm is read",
        "py-amqp raises the return before reading the ack, and a late ack confirms the channel's next message",
        (
            _s("kombu", "kombu.transport.pyamqp:Transport", "class"),
            _s("kombu", "kombu.transport.pyamqp:Transport.Connection", "attribute"),
            _s("kombu", "kombu.transport.pyamqp:Connection.Channel", "attribute"),
            _s("kombu", "kombu.transport.pyamqp:Channel.basic_publish_confirm", "callable"),
            _s("amqp", "amqp.channel:Channel", "instance", source="events"),
            _s(
                "amqp",
                "amqp.channel:Channel._on_basic_return",
                "source",
                source="callback(exc, exchange, routing_key, message)",
            ),
            _s("amqp", "amqp.channel:Channel._on_basic_return", "source", source="events.get('basic_return')"),
            _s(
                "amqp",
                "amqp.channel:Channel.basic_publish_confirm",
                "source",
                source="self.wait([spec.Basic.Ack, spec.Basic.Nack]",
            ),
            _s("kombu", "kombu.exceptions:KombuError", "class"),
        ),
    ),
    Override(
        "app.engine.guarantees.compression:refuse",
        "guarantees",
        "a compressed message is refused as kombu builds it (dead letter `malformed`, recorded raw), never inflated",
        "kombu inflates it before anyone looks: a compression bomb of a few MB takes the worker down for its memory, "
        "and again on every redelivery",
        (
            _s("kombu", "kombu.message:decompress", "callable", "body", "content_type"),
            _s("kombu", "kombu.message:Message.__init__", "callable", source="decompress(body, compression)"),
        ),
    ),
    Override(
        "app.engine.guarantees.builtins:unregister_builtins",
        "guarantees",
        "Celery's built-in tasks (`celery.map`, `celery.accumulate`, `celery.backend_cleanup`, the canvas helpers) "
        "are unregistered: a message naming one is dead-lettered `unknown_task`",
        "anyone with broker credentials runs them; `celery.map` calls any registered task inside the worker, outside "
        "that task's own start check, revocation and time limits",
        (
            _s(
                "celery", "celery.app.base:Celery.finalize", "source", source="self.on_after_finalize.send(sender=self)"
            ),
            _s("celery", "celery.app.registry:TaskRegistry.unregister", "callable", "name"),
            _s("celery", "celery.app.builtins:add_map_task", "source", source="name='celery.map'"),
        ),
    ),
    Override(
        "app.engine.guarantees.results:CourierRedisBackend",
        "guarantees",
        "one script stores a result unless a SUCCESS is already there, and appends the run's history entry in the "
        "same step",
        "stock RedisBackend reads then writes (a race), and no outcome reaches the run history",
        (
            _s("celery", "celery.backends.redis:RedisBackend", "class"),
            _s(
                "celery",
                "celery.backends.redis:RedisBackend._store_result",
                "callable",
                "task_id",
                "result",
                "state",
                "traceback",
                "request",
            ),
            _s(
                "celery",
                "celery.backends.redis:RedisBackend._get_result_meta",
                "callable",
                "result",
                "state",
                "traceback",
                "request",
            ),
            _s("celery", "celery.backends.redis:RedisBackend.encode", "callable"),
            _s("celery", "celery.backends.redis:RedisBackend.get_key_for_task", "callable", "task_id"),
            _s("celery", "celery.backends.redis:RedisBackend.ensure", "callable", "fun", "args"),
            _s("celery", "celery.backends.redis:RedisBackend.client", "attribute"),
            _s("celery", "celery.backends.redis:RedisBackend._MAX_STR_VALUE_SIZE", "attribute"),
            _s("celery", "celery.backends.redis:RedisBackend", "instance", source="failure_expires"),
            _s("redis", "redis.client:Redis.register_script", "callable", "script"),
            _s("redis", "redis.commands.core:Script", "class"),
        ),
    ),
    # --- speed: ENGINE_SPEED_PATCHES=on only ---------------------------------------------------------------
    Override(
        "app.engine.speed.amqp_transport:Transport",
        "speed",
        "frames cut from 256 KiB reads, MSG_DONTWAIT instead of switching the socket's mode, every buffered "
        "message taken per loop turn, a batch's acks in one send",
        "kombu's pyamqp reader and py-amqp's exact-size reads: about 40 system calls per task",
        (
            _s("amqp", "amqp.transport:TCPTransport", "class"),
            _s("amqp", "amqp.transport:_AbstractTransport._setup_transport", "callable"),
            _s("amqp", "amqp.transport:_AbstractTransport.having_timeout", "callable", "timeout"),
            _s("amqp", "amqp.transport:_AbstractTransport.read_frame", "callable", "unpack"),
            _s("amqp", "amqp.transport:TCPTransport._read", "callable", "n", "initial"),
            _s("amqp", "amqp.transport:_AbstractTransport.write", "callable", "s"),
            _s("amqp", "amqp.transport:_AbstractTransport", "instance", source="sock"),
            _s("amqp", "amqp.transport:_AbstractTransport", "instance", source="connected"),
            _s(
                "amqp",
                "amqp.connection:Connection.Transport",
                "callable",
                "host",
                "connect_timeout",
                "ssl",
                "read_timeout",
                "write_timeout",
                "socket_settings",
            ),
            _s("amqp", "amqp.connection:Connection.drain_events", "callable", "timeout"),
            _s("kombu", "kombu.transport.base:Transport._make_reader", "callable", "connection"),
            _s("kombu", "kombu.transport:TRANSPORT_ALIASES", "mapping"),
            _s("kombu", "kombu.connection:resolve_aliases", "mapping"),
        ),
    ),
    Override(
        "app.engine.speed.pool:PreforkPool",
        "speed",
        "SUCCESS results stored by the main process once per loop turn before their acks; the start check of every "
        "job handed over in one round trip; jobs written to idle children directly; long or lost runs journaled",
        "Celery's pool: each child stores its result and checks its start itself (a Redis round trip each); a run's "
        "start is journaled with its outcome only (a run still going, or lost with its child, shows when it ends)",
        (
            _s("celery", "celery.concurrency.prefork:TaskPool", "class"),
            _s("celery", "celery.concurrency.solo:TaskPool", "class"),
            _s("celery", "celery.concurrency.base:BasePool.register_with_event_loop", "callable", "loop"),
            _s("celery", "celery.concurrency.base:BasePool.on_stop", "callable"),
            _s("celery", "celery.concurrency.base:BasePool.apply_async", "callable", "target", "args", "kwargs"),
            _s("celery", "celery.concurrency.prefork:TaskPool", "instance", source="_pool"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="outbound_buffer"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="_active_writes"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="_busy_workers"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="_all_inqueues"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="sched_strategy"),
            _s("celery", "celery.concurrency.asynpool:AsynPool", "instance", source="on_poll_start"),
            _s(
                "celery",
                "celery.concurrency.asynpool:AsynPool._create_write_handlers",
                "source",
                source="hub.consolidate_callback = schedule_writes",
            ),
            _s("celery", "celery.concurrency.asynpool:SCHED_STRATEGY_FAIR", "attribute"),
            _s("kombu", "kombu.asynchronous.hub:Hub", "instance", source="on_tick"),
            _s("kombu", "kombu.asynchronous.hub:Hub", "instance", source="writers"),
            _s("kombu", "kombu.asynchronous.hub:Hub", "instance", source="consolidate_callback"),
            _s("kombu", "kombu.asynchronous.hub:Hub.call_repeatedly", "callable", "delay", "callback"),
            _s(
                "celery",
                "celery.app.trace:fast_trace_task",
                "callable",
                "task",
                "uuid",
                "request",
                "body",
                "content_type",
                "content_encoding",
            ),
            _s("celery", "celery.app.trace:build_tracer", "source", source="Context(request or {}"),
            _s("billiard", "billiard.einfo:ExceptionInfo", "class"),
        ),
    ),
    Override(
        "app.engine.speed.results:BatchingRedisBackend",
        "speed",
        "a pool child's SUCCESS goes to the attempt's HandOff for the main process to store; the extended meta is "
        "built without Celery's two settings lookups per call",
        "CourierRedisBackend stores each result from its child at once, with Celery's own meta",
        (
            _s(
                "celery",
                "celery.backends.base:Backend._get_result_meta",
                "callable",
                "result",
                "state",
                "traceback",
                "request",
                "format_date",
                "encode",
            ),
            _s("celery", "celery.backends.base:Backend.current_task_children", "callable", "request"),
            _s("celery", "celery.backends.base:Backend.READY_STATES", "attribute"),
            _s("celery", "celery.app.task:Context", "class"),
        ),
    ),
    Override(
        "app.engine.speed.consumer:FastConsumer",
        "speed",
        "acks from the loop's own thread at once (the buffered reader leaves nothing to wake the poll); task events "
        "on a connection without confirms",
        "CourierConsumer: Celery defers each ack to the loop's next turn; events wait for confirms",
        (
            _s("celery", "celery.worker.consumer.consumer:Consumer.call_soon_ack", "callable", "p"),
            _s(
                "celery",
                "celery.worker.consumer.consumer:Consumer.connection_for_write",
                "callable",
                "url",
                "heartbeat",
            ),
            _s("celery", "celery.worker.consumer.consumer:Consumer.ensure_connected", "callable", "conn"),
            _s("celery", "celery.worker.consumer.consumer:Consumer.start", "callable"),
            _s("celery", "celery.app.base:Celery.connection_for_write", "callable", "url"),
        ),
    ),
    Override(
        "app.engine.speed.tracing:bounded_repr",
        "speed",
        "the tracer's repr of each result from the builtin repr (C) instead of saferepr (Python)",
        "Celery's saferepr: about a sixth of a pool child's time per no-op task",
        (
            _s("celery", "celery.app.trace:saferepr", "callable"),
            _s("celery", "celery.app.trace:build_tracer", "source", source="saferepr("),
        ),
    ),
    Override(
        "app.engine.speed.amqp_async:AsyncPublisher",
        "speed",
        "the API publishes Celery's own message (as_task_v2) over aiormq with pipelined confirms; an orphaned "
        "confirmation is read when it ends",
        "the API publishes through Celery's apply_async in a thread, one blocked thread per confirm",
        (
            _s(
                "celery",
                "celery.app.amqp:AMQP.as_task_v2",
                "callable",
                "task_id",
                "name",
                "args",
                "kwargs",
                "expires",
                "time_limit",
                "soft_time_limit",
                "argsrepr",
                "kwargsrepr",
                "origin",
            ),
            _s("celery", "celery.app.amqp:AMQP.argsrepr_maxsize", "attribute"),
            _s("aiormq", "aiormq:connect", "callable", "url"),
            _s("aiormq", "aiormq.connection:Connection.channel", "callable", "publisher_confirms"),
            _s("aiormq", "aiormq.channel:Channel.__init__", "callable", "publisher_confirms", "on_return_raises"),
            _s("aiormq", "aiormq.channel:Channel", "instance", source="message_id_delivery_tag"),
            _s("aiormq", "aiormq.channel:Channel", "instance", source="confirmations"),
            _s("pamqp", "pamqp.commands:Basic.Properties", "class"),
        ),
    ),
    # --- wiring --------------------------------------------------------------------------------------------
    Override(
        "app.engine.task:CourierTask",
        "wiring",
        "the start check before each attempt (revoked? killed its worker too often?), delayed retries through delay "
        "queues, an unroutable retry failing as itself",
        "always on: the base class of every task",
        (
            _s("celery", "celery.app.task:Task.before_start", "callable", "task_id", "args", "kwargs"),
            _s("celery", "celery.app.task:Task.on_retry", "callable", "exc", "task_id", "args", "kwargs", "einfo"),
            _s("celery", "celery.app.task:Task.retry", "callable"),
            _s(
                "celery",
                "celery.app.task:Task.signature_from_request",
                "callable",
                "request",
                "args",
                "kwargs",
                "queue",
            ),
            _s("celery", "celery.exceptions:Reject", "class"),
        ),
    ),
    Override(
        "app.engine.celery_app:BeatScheduler",
        "wiring",
        "beat runs without a result backend, and installs no backend-cleanup entry",
        "always on: beat would subscribe to result channels and log CRITICAL after a Redis outage",
        (
            _s("celery", "celery.beat:PersistentScheduler", "class"),
            _s("celery", "celery.beat:Scheduler.install_default_entries", "callable", "data"),
        ),
    ),
)


def symbols() -> list[tuple[Override, Symbol]]:
    """Every (override, upstream symbol) pair."""
    return [(override, symbol) for override in OVERRIDES for symbol in override.symbols]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _symbol_text(symbol: Symbol) -> str:
    name = symbol.name.replace(":", ".")
    if symbol.shape == "instance":
        return f"`{name}` `.{symbol.source}`"
    if symbol.shape == "source":
        return f"`{name}` (source has `{symbol.source}`)"
    return f"`{name}`"


def markdown() -> str:
    """The README's contract table (app/engine/README.md), one row per override."""
    rows = [
        "| override | upstream symbols it subclasses, overrides, calls or reads | written against | why | when off |",
        "|---|---|---|---|---|",
    ]
    for override in OVERRIDES:
        packages = sorted({symbol.package for symbol in override.symbols})
        versions = ", ".join(f"{package} {WRITTEN_AGAINST[package]}" for package in packages)
        listed = "<br>".join(_cell(_symbol_text(symbol)) for symbol in override.symbols)
        rows.append(
            f"| `{override.name.replace(':', '.')}` ({override.layer}) | {listed} | {versions} | "
            f"{_cell(override.why)} | {_cell(override.off)} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
