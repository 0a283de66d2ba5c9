"""The topology read back from RabbitMQ, live policy changes, and a worker that refuses a broken wiring."""

from __future__ import annotations

import uuid

import pytest

from app.config import QueueType, Settings, get_settings
from app.constants import DEAD_LETTER_EXCHANGE
from app.engine import topology
from app.rabbitmq import ManagementClient
from tests.support.session import join


@pytest.fixture
def mgmt():
    with ManagementClient.for_broker_user(get_settings()) as client:
        yield client


def test_the_four_queues_exist_with_their_priorities_and_policies(mgmt):
    # Given the topology the session declared
    vhost = get_settings().broker_vhost
    # Then each work queue has its max priority and the work policy, and the dead-letter queue its own policy
    for name, priority in (("high", 10), ("medium", 5), ("low", 1)):
        queue = join(lambda n=name: (q := mgmt.queue(vhost, n)) and q.get("policy") and q, what=f"{name} policy")
        assert queue["durable"] is True
        assert queue["arguments"] == {"x-max-priority": priority}
        assert queue["policy"] == topology.WORK_POLICY
        assert queue["effective_policy_definition"]["dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
    dlq = join(lambda: (q := mgmt.queue(vhost, "dead_letter")) and q.get("policy") and q, what="dlq policy")
    assert dlq["policy"] == topology.DEAD_LETTER_POLICY
    assert dlq["effective_policy_definition"] == {"message-ttl": 86_400_000, "max-length": 10_000}
    # And the dead-letter exchange is a durable fanout bound to the dead-letter queue
    exchange = mgmt.exchange(vhost, DEAD_LETTER_EXCHANGE)
    assert exchange["type"] == "fanout" and exchange["durable"] is True
    bound = sorted(b["destination"] for b in mgmt.bindings_of_exchange(vhost, DEAD_LETTER_EXCHANGE))
    assert bound == ["dead_letter", "dead_letter.archive"]
    # And a retry delay queue waits its bucket's time, then dead-letters back into its tier
    delay = mgmt.queue(vhost, "delay.high.60")
    assert delay["arguments"] == {
        "x-message-ttl": 60_000,
        "x-dead-letter-exchange": "courier.tasks",
        "x-dead-letter-routing-key": "high",
    }
    # And the task exchange routes each tier by its own name
    bindings = {b["routing_key"]: b["destination"] for b in mgmt.bindings_of_exchange(vhost, "courier.tasks")}
    assert bindings == {"high": "high", "medium": "medium", "low": "low"}
    assert topology.verify(get_settings()) == []


def test_changing_a_limit_and_declaring_again_updates_the_live_queue_without_precondition_failed(mgmt):
    # Given the declared topology
    settings = get_settings()
    changed = settings.model_copy(
        update={"dead_letter_ttl_s": 3600, "dead_letter_max_length": 500, "work_queue_max_length": 1000}
    )
    try:
        # When the limits change in configuration and the topology is declared again
        topology.declare(changed)
        # Then the live queues carry the new limits
        policies = {p["name"]: p["definition"] for p in mgmt.policies(settings.broker_vhost)}
        assert policies[topology.DEAD_LETTER_POLICY] == {"message-ttl": 3_600_000, "max-length": 500}
        assert policies[topology.WORK_POLICY]["max-length"] == 1000
        assert policies[topology.WORK_POLICY]["overflow"] == "reject-publish"
        assert topology.verify(changed) == []
    finally:
        topology.declare(settings)


def test_a_worker_refuses_to_start_when_the_dead_letter_policy_is_missing(mgmt, start_worker):
    # Given the work-queue policy was removed (rejected messages would now be dropped silently)
    settings = get_settings()
    mgmt.delete_policy(settings.broker_vhost, topology.WORK_POLICY)
    try:
        # When a worker starts
        worker = start_worker("low", wait=False)
        worker.process.wait(60)
        # Then it exits with EX_CONFIG and says why and what to run
        assert worker.process.returncode == 78
        log = worker.log()
        assert "Refusing to start" in log
        assert "python -m app.cli topology declare" in log
    finally:
        topology.declare(settings)


def test_a_queue_declared_with_another_type_is_reported_clearly_instead_of_crashing():
    # Given live classic queues
    settings = get_settings()
    # When the configuration asks for quorum queues
    quorum = settings.model_copy(update={"queue_type": QueueType.quorum})
    # Then declare refuses with a message naming each queue and the way out
    with pytest.raises(topology.TopologyError) as raised:
        topology.declare(quorum)
    assert len(raised.value.problems) == 44  # three work queues, both dead-letter queues and 39 delay queues
    assert "cannot change a queue's type or max priority" in str(raised.value)


def test_quorum_queues_carry_their_type_and_a_delivery_limit_instead_of_priorities():
    # Given quorum settings
    settings = Settings(_env_file=None, queue_type=QueueType.quorum, delivery_limit=4)
    # Then the queues are quorum without priorities, and the work policy bounds deliveries
    replicated = {q.name: q.queue_arguments for q in topology.queues(settings) if not q.name.startswith("delay.")}
    quorum = {"x-queue-type": "quorum", "x-quorum-initial-group-size": 3}
    assert replicated == dict.fromkeys(("high", "medium", "low", "dead_letter", "dead_letter.archive"), quorum)
    # And the work policy bounds deliveries and dead-letters at least once (which needs reject-publish)
    work = next(p for p in topology.policies(settings) if p.name == topology.WORK_POLICY)
    assert work.definition == {
        "dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "delivery-limit": 4,
        "dead-letter-strategy": "at-least-once",
        "overflow": "reject-publish",
    }
    # And every delay queue is quorum too, dead-lettering back to its tier at least once
    for queue in topology.queues(settings):
        if queue.name.startswith("delay."):
            assert queue.queue_arguments["x-queue-type"] == "quorum"
            assert queue.queue_arguments["x-dead-letter-strategy"] == "at-least-once"
            assert queue.queue_arguments["x-overflow"] == "reject-publish"


def test_quorum_topology_declares_and_verifies_on_a_fresh_vhost():
    # Given an empty vhost of its own
    settings = get_settings()
    vhost = f"{settings.broker_vhost}_q{uuid.uuid4().hex[:4]}"
    user, password = settings.broker_credentials
    quorum = settings.model_copy(
        update={
            "queue_type": QueueType.quorum,
            "celery_broker_url": settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}",
        }
    )
    with ManagementClient.for_broker_user(settings) as admin:
        admin.put_vhost(vhost)
        admin.put_permissions(vhost, user)
        try:
            # When the quorum topology is declared there
            topology.declare(quorum)
            # Then it verifies, and the queues are quorum queues
            assert topology.verify(quorum) == []
            assert admin.queue(vhost, "high")["arguments"] == {
                "x-queue-type": "quorum",
                "x-quorum-initial-group-size": 3,
            }
        finally:
            admin.delete_vhost(vhost)


@pytest.mark.parametrize(
    ("wanted", "bucket"), [(0, 1), (0.4, 1), (1, 1), (4.9, 2), (45, 30), (600, 600), (10**6, 3600)]
)
def test_a_retry_delay_is_rounded_down_to_a_delay_bucket(wanted, bucket):
    assert topology.delay_bucket(wanted) == bucket


def test_a_delayed_retry_waits_in_a_delay_queue_on_the_broker_then_returns_to_its_tier():
    # Given a retry of a medium-tier task due in 1.5 s (no worker consumes medium in this module)
    from celery.app.task import Context

    from app.engine.celery_app import celery_app
    from tests.support.services import queue_depth

    celery_app.loader.import_default_modules()
    task = celery_app.tasks["system.ping"]
    request = Context(
        id=str(uuid.uuid4()),
        task="system.ping",
        args=[],
        kwargs={"echo": "later"},
        retries=0,
        delivery_info={"exchange": "courier.tasks", "routing_key": "medium", "priority": 3},
    )
    before = queue_depth("medium")["ready"]
    # When Courier builds and publishes the retry
    retry = task.signature_from_request(request, countdown=1.5, retries=1)
    assert retry.options["queue"].name == "delay.medium.1"
    assert (retry.options["exchange"], retry.options["routing_key"]) == ("courier.delay", "medium.1")
    assert "countdown" not in retry.options and "eta" not in retry.options
    retry.apply_async()
    # Then it waits in the delay queue, not in any worker's memory, and comes back to medium after its TTL
    assert queue_depth("delay.medium.1")["ready"] == 1
    join(lambda: queue_depth("medium")["ready"] == before + 1, what="the retry to return to medium")
    assert queue_depth("delay.medium.1")["ready"] == 0
