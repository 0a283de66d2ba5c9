"""RabbitMQ topology as data: exchanges, the high/medium/low work queues, the dead-letter exchange and queue.

Only what RabbitMQ cannot set by policy is an x-argument (`x-max-priority`, `x-queue-type`, a quorum queue's
replica count); everything that is a *limit* (dead-letter exchange, TTL, max length, overflow, delivery limit,
dead-letter strategy) is a policy, so changing it in configuration and re-running `declare()` applies it to the
live queues without PRECONDITION_FAILED. The delay queues are the exception: their name says their TTL and
target, so those are declare-time arguments.

QUEUE_TYPE=quorum makes every queue quorum with QUEUE_REPLICAS replicas: the work queues, the 39 delay queues
and both dead-letter queues. A queue that dead-letters (work and delay queues) does it at least once
(`dead-letter-strategy: at-least-once`, which RabbitMQ honours only with `overflow: reject-publish`): a message
leaves its queue only when the target queue has confirmed it, so a node lost mid-way loses no dead letter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from app.config import QueueType, Settings, get_settings
from app.constants import (
    DEAD_LETTER_ARCHIVE_QUEUE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DELAY_BUCKETS_S,
    DELAY_EXCHANGE,
    DELAY_QUEUE,
    TASK_EXCHANGE,
    TIER_MAX_PRIORITY,
    Tier,
)
from app.rabbitmq import ManagementClient, ManagementError, broker_connection, connect_any

logger = logging.getLogger(__name__)

#: Policy names; `verify()` expects them applied to the queues they match.
WORK_POLICY = "courier-work-queues"
DEAD_LETTER_POLICY = "courier-dead-letter"
#: Above any policy an operator is likely to have; RabbitMQ applies only the highest-priority match.
POLICY_PRIORITY = 10


@dataclass(frozen=True)
class Policy:
    """A RabbitMQ queue policy: a name, an anchored pattern and a definition."""

    name: str
    pattern: str
    definition: dict[str, Any] = field(hash=False)


def task_exchange() -> Exchange:
    """The durable direct exchange every task is published to (routing key = tier)."""
    return Exchange(TASK_EXCHANGE, type="direct", durable=True, delivery_mode="persistent")


def dead_letter_exchange() -> Exchange:
    """The fanout exchange the work queues dead-letter into."""
    return Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True, delivery_mode="persistent")


#: What a quorum queue that dead-letters needs to dead-letter at least once (RabbitMQ 3.10+).
AT_LEAST_ONCE = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}
#: The declare-time arguments `argument_mismatches` compares: a live queue cannot change them.
FIXED_ARGUMENTS = ("x-max-priority", "x-queue-type", "x-dead-letter-strategy", "x-overflow")


def queue_arguments(settings: Settings, tier: Tier | None) -> dict[str, Any]:
    """The declare-time x-arguments of a queue: the only keys a policy cannot set."""
    if settings.queue_type is QueueType.quorum:
        return {"x-queue-type": "quorum", "x-quorum-initial-group-size": settings.queue_replicas}
    return {"x-max-priority": TIER_MAX_PRIORITY[tier]} if tier is not None else {}


def work_queues(settings: Settings) -> list[Queue]:
    """The high, medium and low work queues, bound to the task exchange by their own names."""
    exchange = task_exchange()
    return [
        Queue(
            tier.value,
            exchange,
            routing_key=tier.value,
            durable=True,
            queue_arguments=queue_arguments(settings, tier),
        )
        for tier in Tier
    ]


def dead_letter_queue(settings: Settings) -> Queue:
    """The queue behind the dead-letter exchange; ops staff read it, no Celery worker consumes it."""
    return Queue(
        DEAD_LETTER_QUEUE,
        dead_letter_exchange(),
        routing_key="",
        durable=True,
        queue_arguments=queue_arguments(settings, None),
    )


def dead_letter_archive_queue(settings: Settings) -> Queue:
    """The recorder's copy of every dead letter: durable, no TTL, so SQL gets each one even after an outage."""
    return Queue(
        DEAD_LETTER_ARCHIVE_QUEUE,
        dead_letter_exchange(),
        routing_key="",
        durable=True,
        queue_arguments=queue_arguments(settings, None),
    )


def delay_bucket(delay_s: float) -> int:
    """The delay bucket for a wanted delay: the longest bucket not above it (the shortest for tiny delays)."""
    fitting = [b for b in DELAY_BUCKETS_S if b <= delay_s]
    return fitting[-1] if fitting else DELAY_BUCKETS_S[0]


def delay_queue(tier: Tier, seconds: int, settings: Settings | None = None) -> Queue:
    """A retry delay queue: messages wait `seconds`, then dead-letter back into the tier's queue.

    Its TTL and target are declare-time arguments on purpose: the name says the delay, so they never change. In
    quorum mode it is replicated like the work queues, and dead-letters at least once.
    """
    settings = settings or get_settings()
    extra: dict[str, Any] = queue_arguments(settings, None)
    if settings.queue_type is QueueType.quorum:
        extra |= {f"x-{key}": value for key, value in AT_LEAST_ONCE.items()}
    return Queue(
        DELAY_QUEUE.format(tier=tier.value, seconds=seconds),
        Exchange(DELAY_EXCHANGE, type="direct", durable=True, delivery_mode="persistent"),
        routing_key=f"{tier.value}.{seconds}",
        durable=True,
        queue_arguments={
            "x-message-ttl": seconds * 1000,
            "x-dead-letter-exchange": TASK_EXCHANGE,
            "x-dead-letter-routing-key": tier.value,
            **extra,
        },
    )


def queues(settings: Settings) -> list[Queue]:
    """Every queue Courier declares, work queues first."""
    delays = [delay_queue(tier, seconds, settings) for tier in Tier for seconds in DELAY_BUCKETS_S]
    return [*work_queues(settings), dead_letter_queue(settings), dead_letter_archive_queue(settings), *delays]


def policies(settings: Settings) -> list[Policy]:
    """The two policies that carry every limit: work-queue dead-lettering and dead-letter retention."""
    work: dict[str, Any] = {"dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    if settings.work_queue_max_length:
        # reject-publish nacks the publish, which the confirmed publisher turns into HTTP 503.
        work |= {"max-length": settings.work_queue_max_length, "overflow": "reject-publish"}
    if settings.queue_type is QueueType.quorum:
        # At-least-once dead-lettering (reject-publish is what makes RabbitMQ honour it: with drop-head it falls
        # back to at-most-once); the delivery limit is a backstop behind Courier's start count (config.py).
        work |= {**AT_LEAST_ONCE, "delivery-limit": settings.delivery_limit}
    tiers = "|".join(tier.value for tier in Tier)
    return [
        Policy(WORK_POLICY, f"^({tiers})$", work),
        Policy(
            DEAD_LETTER_POLICY,
            f"^{DEAD_LETTER_QUEUE}$",
            {"message-ttl": settings.dead_letter_ttl_s * 1000, "max-length": settings.dead_letter_max_length},
        ),
    ]


def declare(settings: Settings, connection: Connection | None = None) -> None:
    """Declare exchanges, queues and bindings over AMQP, then apply the policies; idempotent.

    Raises:
        TopologyError: when a queue already exists with other declare-time arguments (type or priority).
        ManagementError: when the management API cannot apply the policies.
    """
    mismatches = argument_mismatches(settings)
    if mismatches:
        raise TopologyError(mismatches)
    # Policies first: a queue declared a moment before its policy would briefly drop rejected messages.
    with ManagementClient.for_broker_user(settings) as client:
        for policy in policies(settings):
            client.put_policy(
                settings.broker_vhost,
                policy.name,
                pattern=policy.pattern,
                definition=policy.definition,
                priority=POLICY_PRIORITY,
            )
    own = connection is None
    conn = connection or connect_any(broker_connection(settings, connect_timeout=settings.publish_timeout_s), settings)
    try:
        channel = conn.default_channel
        for queue in queues(settings):
            queue(channel).declare()
    finally:
        if own:
            conn.release()
    logger.info("Declared the Courier topology on vhost %r.", settings.broker_vhost)


class TopologyError(RuntimeError):
    """The live topology does not match what Courier needs; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("RabbitMQ topology problems:\n  - " + "\n  - ".join(problems))


def argument_mismatches(settings: Settings) -> list[str]:
    """Queues that exist with declare-time arguments other than ours (a redeclare would fail)."""
    problems = []
    with ManagementClient.for_broker_user(settings) as client:
        existing = {q["name"]: q for q in client.queues(settings.broker_vhost)}
    for queue in queues(settings):
        live = existing.get(queue.name)
        if live is None:
            continue
        wanted: dict[str, Any] = getattr(queue, "queue_arguments", None) or {}
        fixed_keys = FIXED_ARGUMENTS
        have = {k: v for k, v in (live.get("arguments") or {}).items() if k in fixed_keys}
        want = {k: v for k, v in wanted.items() if k in fixed_keys}
        if have.get("x-queue-type", "classic") == "classic":
            have.pop("x-queue-type", None)
        if have != want:
            problems.append(
                f"queue {queue.name!r} exists with {have or 'no type/priority arguments'} but the configuration "
                f"asks for {want or 'none'}; RabbitMQ cannot change a queue's type or max priority in place: "
                "`python -m app.cli topology migrate` moves its messages to a queue of the new kind"
            )
    return problems


def effective_policy(live_policies: list[dict[str, Any]], queue_name: str) -> dict[str, Any] | None:
    """The policy RabbitMQ applies to a queue: the highest-priority one whose pattern matches its name.

    Computed from the policy list rather than read from queue statistics, which lag by several seconds.
    """
    matching = [
        p
        for p in live_policies
        if p.get("apply-to", "all") in ("all", "queues") and re.search(p.get("pattern", "$^"), queue_name)
    ]
    return max(matching, key=lambda p: int(p.get("priority", 0)), default=None)


def verify(settings: Settings) -> list[str]:
    """Check the live topology: every work queue dead-letters into a bound dead-letter queue with limits; in quorum
    mode also every queue's type, replica count and replicas online, and at-least-once dead-lettering. Works with
    a node down (the management client asks another node).

    Returns a list of problems, empty when all is well.
    """
    vhost = settings.broker_vhost
    problems: list[str] = []
    try:
        with ManagementClient.for_broker_user(settings) as client:
            live_policies = client.policies(vhost)
            if client.exchange(vhost, DEAD_LETTER_EXCHANGE) is None:
                problems.append(f"dead-letter exchange {DEAD_LETTER_EXCHANGE!r} does not exist")
            else:
                bound = {b.get("destination") for b in client.bindings_of_exchange(vhost, DEAD_LETTER_EXCHANGE)}
                for name in (DEAD_LETTER_QUEUE, DEAD_LETTER_ARCHIVE_QUEUE):
                    if name not in bound:
                        problems.append(f"{DEAD_LETTER_EXCHANGE!r} is not bound to queue {name!r}")
            live_queues = {q["name"]: q for q in client.queues(vhost)}
            for name in (DEAD_LETTER_QUEUE, DEAD_LETTER_ARCHIVE_QUEUE):
                if name not in live_queues:
                    problems.append(f"queue {name!r} does not exist")
            if settings.queue_type is QueueType.quorum:
                node_count = len(client.nodes())
                problems += argument_mismatches(settings)
                problems += replica_problems(settings, live_queues, node_count)
    except ManagementError as exc:
        return [f"cannot read the topology through the management API: {exc}"]
    applied = effective_policy(live_policies, DEAD_LETTER_QUEUE)
    for key in ("message-ttl", "max-length"):
        if applied is None or key not in applied.get("definition", {}):
            problems.append(
                f"queue {DEAD_LETTER_QUEUE!r} gets no {key} (policy {DEAD_LETTER_POLICY!r} missing "
                f"or overridden by {applied and applied.get('name')!r})"
            )
    for tier in Tier:
        applied = effective_policy(live_policies, tier.value)
        definition = (applied or {}).get("definition", {})
        if definition.get("dead-letter-exchange") != DEAD_LETTER_EXCHANGE:
            problems.append(
                f"queue {tier.value!r} would not dead-letter into {DEAD_LETTER_EXCHANGE!r} "
                f"(policy {WORK_POLICY!r} missing or overridden by {applied and applied.get('name')!r})"
            )
        elif settings.queue_type is QueueType.quorum and any(definition.get(k) != v for k, v in AT_LEAST_ONCE.items()):
            problems.append(
                f"queue {tier.value!r} dead-letters at most once (its policy lacks {AT_LEAST_ONCE}): a dead letter "
                "can be lost when a node fails mid-way; run `python -m app.cli topology declare`"
            )
    return problems


def verified(settings: Settings) -> str:
    """What `verify` checked, in a sentence, for the operator it found nothing wrong for."""
    tiers = [t.value for t in Tier]
    checked = (
        f"exchange {DEAD_LETTER_EXCHANGE!r} bound to {DEAD_LETTER_QUEUE!r} and {DEAD_LETTER_ARCHIVE_QUEUE!r}, "
        f"{DEAD_LETTER_QUEUE!r}'s TTL and length limit, and the {len(tiers)} work queues ({', '.join(tiers)}) "
        f"dead-lettering into {DEAD_LETTER_EXCHANGE!r}"
    )
    if settings.queue_type is QueueType.quorum:
        checked += f"; {len(queues(settings))} queues' type, arguments and replicas (at-least-once dead-lettering)"
    kind = settings.queue_type.value
    return f"Topology on vhost {settings.broker_vhost!r} is as declared ({kind} queues): {checked}."


def replica_problems(settings: Settings, live_queues: dict[str, dict[str, Any]], node_count: int) -> list[str]:
    """Quorum queues with fewer replicas than QUEUE_REPLICAS asks for (at most the cluster's nodes), or too few
    online to take messages (no majority). A replica whose node is down still counts as a replica: the queue
    works on while a majority is online, and the node catches up when it returns."""
    wanted = min(settings.queue_replicas, max(node_count, 1))
    problems = []
    for queue in queues(settings):
        live = live_queues.get(queue.name)
        if live is None or live.get("type") != "quorum":
            continue
        members, online = live.get("members") or [], live.get("online") or []
        if len(members) < wanted:
            problems.append(
                f"queue {queue.name!r} has {len(members)} replica(s) ({', '.join(members) or 'none'}), QUEUE_REPLICAS "
                f"asks for {wanted}: add one on another node (rabbitmq-queues add_member {queue.name} <node>, or "
                "rabbitmq-queues grow <node> all)"
            )
        elif members and len(online) <= len(members) // 2:
            problems.append(
                f"queue {queue.name!r} has {len(online)} of {len(members)} replicas online: no majority, it takes "
                "no messages until another of its nodes returns"
            )
    return problems
