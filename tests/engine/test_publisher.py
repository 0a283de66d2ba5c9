"""The API's publisher: confirms awaited concurrently, unroutable messages refused, channels reopened, and the
task metas of concurrent dispatches written together without losing any or leaving one waiting."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from app.config import Settings, get_settings
from app.constants import Tier
from app.engine import publish
from app.engine.celery_app import celery_app
from app.engine.speed.amqp_async import AsyncPublisher, PublishFailed
from app.errors import Unprocessable
from tests.support.processes import TcpProxy
from tests.support.services import AMQP_HOST, MGMT_AUTH, REDIS_HOST, VHOST, queue_depth, redis_client, redis_db


def _publish(publisher: AsyncPublisher, routing_key: str) -> asyncio.Future[None]:
    return asyncio.ensure_future(
        publisher.publish(
            name="system.ping", task_id=str(uuid.uuid4()), kwargs={}, routing_key=routing_key, priority=1, options={}
        )
    )


def test_many_publishes_in_flight_are_each_confirmed_and_an_unroutable_one_is_refused(empty_queues):
    async def run() -> None:
        publisher = AsyncPublisher(get_settings(), celery_app.amqp, channels=2)
        try:
            # When 40 publishes are in flight at once, Then each is confirmed and all are in the queue
            await asyncio.gather(*(_publish(publisher, Tier.low.value) for _ in range(40)))
            assert queue_depth("low")["ready"] == 40
            # When a message cannot be routed (no queue is bound to its key), Then its publish fails
            with pytest.raises(PublishFailed):
                await _publish(publisher, "no-such-tier")
            # And the channel it used still publishes
            await asyncio.gather(*(_publish(publisher, Tier.low.value) for _ in range(4)))
        finally:
            await publisher.close()

    asyncio.run(run())
    assert queue_depth("low")["ready"] == 44


def test_a_channel_the_broker_closed_is_reopened_on_its_next_use(empty_queues):
    async def run() -> None:
        publisher = AsyncPublisher(get_settings(), celery_app.amqp, channels=1)
        try:
            await _publish(publisher, Tier.low.value)
            # Given its only channel is closed (as the broker closes a channel on a channel error)
            await publisher._channels[0].close()
            # When the next message is published, Then it is confirmed on a new channel
            await _publish(publisher, Tier.low.value)
        finally:
            await publisher.close()

    asyncio.run(run())
    assert queue_depth("low")["ready"] == 2


def test_concurrent_metas_are_all_written_with_their_ttl():
    keys = [f"courier:test-meta:{uuid.uuid4()}" for _ in range(50)]

    async def run() -> None:
        client = aioredis.Redis(host=REDIS_HOST, db=redis_db(), decode_responses=True)
        writer = publish.MetaWriter(client, ttl_s=300)
        try:
            await asyncio.gather(
                *(writer.write(key, {"name": "system.ping", "n": str(i)}) for i, key in enumerate(keys))
            )
        finally:
            await client.aclose()

    asyncio.run(run())
    stored = redis_client()
    assert [stored.hget(key, "n") for key in keys] == [str(i) for i in range(len(keys))]
    assert all(0 < stored.ttl(key) <= 300 for key in keys)


def test_when_redis_is_unreachable_every_waiting_dispatch_gets_the_error():
    async def run() -> list[BaseException | None]:
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens on port 1
        writer = publish.MetaWriter(client, ttl_s=300)
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(writer.write(f"k{i}", {"a": "b"}) for i in range(10)), return_exceptions=True), 10
            )
        finally:
            await client.aclose()

    outcomes = asyncio.run(run())
    assert len(outcomes) == 10 and all(isinstance(o, redis.RedisError) for o in outcomes)


def test_the_message_has_celerys_headers_without_saferepr_or_a_host_lookup_per_message(monkeypatch):
    """build_message gives `apply_async`'s headers (as_task_v2), with the reprs from the builtin repr and the
    origin computed once: Celery's per-message saferepr and host lookup were a tenth of the publisher's time."""
    from celery.app import amqp

    from app.engine.celery_app import celery_app
    from app.engine.speed.amqp_async import build_message

    kwargs = {"echo": "x" * 2000, "n": [1, 2]}
    celerys = celery_app.amqp.as_task_v2("t-1", "system.ping", args=(), kwargs=kwargs).headers
    build_message(
        celery_app.amqp, name="system.ping", task_id="t-0", kwargs={}, priority=3, options={}
    )  # (origin computed)

    def per_message(*_: object, **__: object) -> str:
        raise AssertionError("called per message")

    monkeypatch.setattr(amqp, "saferepr", per_message)
    monkeypatch.setattr(amqp, "anon_nodename", per_message)
    ours = build_message(
        celery_app.amqp, name="system.ping", task_id="t-1", kwargs=kwargs, priority=3, options={}
    ).headers
    assert {k: ours[k] for k in celerys if k != "kwargsrepr"} == {k: v for k, v in celerys.items() if k != "kwargsrepr"}
    assert len(ours["kwargsrepr"]) == 1024 and ours["kwargsrepr"].startswith("{'echo': 'xxx")
    assert ours["argsrepr"] == celerys["argsrepr"] == "()"


@pytest.mark.parametrize(
    "options",
    [
        {"time_limit": 2},  # under ping's own soft limit (120 s)
        {"soft_time_limit": 3600},  # over ping's own hard limit (150 s)
        {"soft_time_limit": 5, "time_limit": 5},
        {"soft_time_limit": 3600, "time_limit": 0.5},
    ],
)
def test_a_hard_time_limit_not_above_the_soft_one_is_refused_and_nothing_is_published(empty_queues, options):
    # Given limits the prefork pool would not enforce as given (it arms the hard timer only once the soft one fired,
    # so ping with time_limit 2 ran its 8 s sleep to SUCCESS)
    # When a dispatch asks for them
    with pytest.raises(Unprocessable) as refused:
        publish.dispatch("system.ping", kwargs={"sleep_s": 8}, triggered_by="tester", tier=Tier.low, options=options)
    # Then it is refused, naming both limits, and nothing reached the queue
    assert "must exceed the soft one" in refused.value.message
    assert queue_depth("low")["ready"] == 0


def test_a_hard_time_limit_above_the_soft_one_is_dispatched(empty_queues):
    # Given limits in order, one given and the other the task's (ping: soft 120 s, hard 150 s), or both given
    for options in ({"soft_time_limit": 1, "time_limit": 2}, {"time_limit": 600}, {"soft_time_limit": 30}):
        # When a dispatch asks for them, Then it is published
        publish.dispatch("system.ping", kwargs={}, triggered_by="tester", tier=Tier.low, options=options)
    assert queue_depth("low")["ready"] == 3


def test_a_node_that_holds_the_connection_but_confirms_nothing_is_left_for_the_next_node(empty_queues):
    # Given a publisher on two nodes, connected to the first (through a proxy) and round-robin to the second
    with TcpProxy(5672, AMQP_HOST) as proxy:
        settings = Settings(
            _env_file=None,
            celery_broker_url="",
            rabbitmq_hosts=f"127.0.0.1:{proxy.port},{AMQP_HOST}:5672",
            rabbitmq_user=MGMT_AUTH[0],
            rabbitmq_password=MGMT_AUTH[1],
            rabbitmq_vhost=VHOST,
            queue_type="quorum",
            broker_failover_strategy="round-robin",
            publish_timeout_s=1,
        )

        async def run() -> list[str]:
            publisher = AsyncPublisher(settings, celery_app.amqp, channels=1)
            outcomes = []
            try:
                await _publish(publisher, Tier.low.value)
                # When the first node freezes (its process stopped: the TCP connection stays open, nothing answers)
                proxy.freeze()
                for _ in range(3):
                    try:
                        await _publish(publisher, Tier.low.value)
                        outcomes.append("confirmed")
                    except PublishFailed:
                        outcomes.append("failed")
            finally:
                proxy.thaw()
                await publisher.close()
            return outcomes

        # Then the publish in flight fails, and the next ones are confirmed by the other node, not refused for as
        # long as the frozen node's heartbeat takes to notice
        assert asyncio.run(run()) == ["failed", "confirmed", "confirmed"]
