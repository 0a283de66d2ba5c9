"""Every Celery publish is mandatory, and a message RabbitMQ cannot route is an error for its publisher, never
a confirmed drop: the sync dispatch, a task's retry into a delay queue, a dead-letter replay
and beat. Each test unbinds a queue (or deletes delay queues) in the session's vhost and restores it after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from amqp.exceptions import AMQPError
from celery.beat import ScheduleEntry, Scheduler, SchedulingError
from kombu import Connection
from kombu.exceptions import KombuError

from app.config import get_settings
from app.constants import DELAY_BUCKETS_S, DELAY_QUEUE, TASK_EXCHANGE, Tier
from app.engine import topology
from app.engine.celery_app import celery_app
from app.engine.policy import POLICIES
from app.errors import ServiceUnavailable
from tests.support.api import auth, dispatch
from tests.support.services import queue_depth
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("empty_queues")


def _unbind(tier: Tier) -> None:
    with Connection(get_settings().broker_url) as conn:
        conn.default_channel.queue_unbind(queue=tier.value, exchange=TASK_EXCHANGE, routing_key=tier.value)


@pytest.fixture
def restore_topology() -> Iterator[None]:
    """Whatever a test unbinds or deletes is declared again afterwards (the same function `start` runs)."""
    yield
    topology.declare(get_settings())


def _publish_raw(producer, routing_key: str) -> None:
    producer.publish(
        b"{}", exchange=TASK_EXCHANGE, routing_key=routing_key, content_type="application/json", mandatory=True
    )


def test_a_returned_message_fails_its_own_publish_and_the_channel_stays_in_step():
    # Given one confirmed channel of Celery's transport
    with celery_app.connection_for_write() as conn:
        producer = conn.Producer()
        # When an unroutable message, a routable one and an unroutable one again are published on it
        with pytest.raises((KombuError, AMQPError)):
            _publish_raw(producer, "no-such-queue")
        _publish_raw(producer, Tier.low.value)
        # Then the second unroutable one fails too: its confirm was not taken from the earlier message's ack
        with pytest.raises((KombuError, AMQPError)):
            _publish_raw(producer, "no-such-queue")
        # And the routable one was delivered
        assert queue_depth(Tier.low.value)["ready"] == 1


def test_a_sync_dispatch_to_an_unbound_queue_answers_503_and_drops_nothing(restore_topology):
    from app.engine import publish

    # Given a dispatch that went through (the publisher's connection has already seen the queue) ...
    publish.dispatch("system.ping", kwargs={}, triggered_by="test", tier=Tier.low)
    assert queue_depth(Tier.low.value)["ready"] == 1
    # ... and then the low queue unbound from the task exchange
    _unbind(Tier.low)
    # When five more are dispatched, each is refused with ServiceUnavailable (the API's 503, the CLI's error)
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            publish.dispatch("system.ping", kwargs={}, triggered_by="test", tier=Tier.low)
    # Then none was confirmed and dropped: the queue holds only the first
    assert queue_depth(Tier.low.value)["ready"] == 1
    # And once the binding is back, the same pooled channels publish and confirm again
    topology.declare(get_settings())
    publish.dispatch("system.ping", kwargs={}, triggered_by="test", tier=Tier.low)
    assert queue_depth(Tier.low.value)["ready"] == 2


def test_beats_publish_to_an_unbound_queue_raises(restore_topology):
    # Given a real beat entry, and its tier's queue unbound
    name = "notifications.process_scheduled_notifications"
    tier = POLICIES[name].tier
    _unbind(tier)
    scheduler = Scheduler(app=celery_app, lazy=True)
    entry = ScheduleEntry(name="process-scheduled-notifications", task=name, schedule=60.0, app=celery_app)
    try:
        # When beat applies it, the publish fails (beat logs "Message Error" and the next tick tries again)
        with pytest.raises(SchedulingError):
            scheduler.apply_async(entry, advance=False)
    finally:
        scheduler.close()
    # Then nothing was silently accepted
    assert queue_depth(tier.value)["ready"] == 0


def test_a_retry_whose_delay_queue_is_missing_is_dead_lettered_not_lost(
    api, admin_key, start_worker, recorder, restore_topology
):
    from tests.support.api import one_letter

    # Given a worker on medium and a task there that will fail transiently (so it retries) ...
    start_worker("medium", concurrency=1)
    task_id = dispatch(api, admin_key, tier="medium", fail="transient", sleep_s=1.5)
    # ... and, while it runs, every place its retry could go removed: the delay queues and medium's binding
    with Connection(get_settings().broker_url) as conn:
        for seconds in DELAY_BUCKETS_S:
            conn.default_channel.queue_delete(DELAY_QUEUE.format(tier="medium", seconds=seconds))
    _unbind(Tier.medium)
    # Then the retry is refused, and the task ends as a dead letter that says so (not acked and lost)
    letter = one_letter(api, admin_key, task_id, timeout=30)
    assert (letter["reason"], letter["error_class"]) == ("unroutable", "Unroutable")
    assert letter["queue"] == "medium"
    task = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()
    assert task["state"] == "DEAD_LETTERED"


def test_a_replay_to_an_unbound_queue_answers_503_and_the_letter_stays_pending(
    api, admin_key, start_worker, recorder, restore_topology
):
    from tests.support.api import one_letter

    # Given a dead letter of the low tier
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent")
    letter = one_letter(api, admin_key, task_id)
    url = f"/api/v1/tasks/dead-letters/{letter['id']}"
    # When low is unbound and the letter replayed
    _unbind(Tier.low)
    answer = api.post(f"{url}/replay", json={"why": "test"}, headers=auth(admin_key))
    # Then the replay is refused with a clear 503, and the letter is still pending
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "unavailable"
    assert "route" in answer.json()["error"]["message"]
    assert api.get(url, headers=auth(admin_key)).json()["status"] == "pending"
    # And once the binding is back, the replay goes through
    topology.declare(get_settings())
    answer = api.post(f"{url}/replay", json={"why": "test"}, headers=auth(admin_key))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "replayed"
    join(lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] != "PENDING")
