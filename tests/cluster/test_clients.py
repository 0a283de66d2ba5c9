"""The cluster settings and the clients' failover, without a cluster: hosts that refuse connections are free
loopback ports, and the node that answers is the session's own RabbitMQ (or its management API)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.support.processes import free_port
from tests.support.services import AMQP_HOST, MGMT_AUTH, MGMT_URL, VHOST

PASSWORD = "n0t/in@any-log"


def settings(**values: object) -> Settings:
    """Settings from `values` alone (the session's broker URL, which the environment sets, left out)."""
    return Settings(_env_file=None, **{"celery_broker_url": "", **values})  # type: ignore[arg-type]


def test_rabbitmq_hosts_give_one_broker_url_per_node_joined_as_kombus_failover_list():
    # Given three nodes, one without a port
    cluster = settings(rabbitmq_hosts="rabbit-1:5701, rabbit-2,rabbit-3:5703", queue_type="quorum")
    # Then each gets a URL with the same login and vhost, and kombu gets them `;`-joined
    assert cluster.broker_urls == [
        "amqp://courier:courier_dev_pass@rabbit-1:5701/courier",
        "amqp://courier:courier_dev_pass@rabbit-2:5672/courier",
        "amqp://courier:courier_dev_pass@rabbit-3:5703/courier",
    ]
    assert cluster.broker_url == ";".join(cluster.broker_urls)
    assert cluster.broker_vhost == "courier"


def test_classic_queues_are_refused_with_several_broker_hosts_and_the_error_shows_no_password():
    # Given a cluster configuration left on classic queues, with a password in its URLs
    with pytest.raises(ValidationError) as refused:
        settings(rabbitmq_hosts="a,b", rabbitmq_password=PASSWORD)
    # Then it is refused with the reason, and the password appears nowhere in the error
    assert "QUEUE_TYPE=quorum" in str(refused.value)
    assert PASSWORD not in str(refused.value) and "n0t%2Fin" not in str(refused.value)


def test_a_delivery_limit_at_or_below_the_start_count_is_refused_in_quorum_mode():
    with pytest.raises(ValidationError, match="DELIVERY_LIMIT must exceed MAX_STARTS_PER_ATTEMPT"):
        settings(queue_type="quorum", delivery_limit=3, max_starts_per_attempt=3)
    assert settings(queue_type="classic", delivery_limit=3).delivery_limit == 3


def test_redis_sentinels_turn_both_redis_urls_into_sentinel_dsns_with_their_db_and_password():
    # Given Sentinels, a result backend on db 4 and Courier's keys on db 5
    found = settings(
        redis_sentinels="s1:26379,s2",
        celery_result_backend="redis://unused:6379/4",
        redis_url="redis://unused:6379/5",
        redis_password=PASSWORD,
    )
    # Then both name every Sentinel, keep their db, and carry the password (percent-encoded) for the primary
    encoded = "n0t%2Fin%40any-log"
    assert found.result_backend_dsn == f"sentinel://:{encoded}@s1:26379/4;sentinel://:{encoded}@s2:26379/4"
    assert found.redis_dsn == f"sentinel://:{encoded}@s1:26379/5;sentinel://:{encoded}@s2:26379/5"
    assert PASSWORD in found.secrets


def test_the_engine_picks_the_sentinel_variant_of_its_result_backend_for_a_sentinel_dsn():
    from app.engine import install
    from app.engine.guarantees.results import CourierSentinelBackend
    from app.engine.speed.results import BatchingSentinelBackend

    for speed, cls in ((True, BatchingSentinelBackend), (False, CourierSentinelBackend)):
        engine = install.select(settings(engine_speed_patches=speed))
        assert engine.result_backend("sentinel://s1:26379/0").startswith(f"{install.reference(cls)}+sentinel://")


def test_the_management_client_asks_the_next_node_when_one_refuses_and_logs_no_password(caplog):
    from app.rabbitmq import ManagementClient

    # Given a node that refuses (a free port, with a login in its URL) listed before the session's own
    dead = f"http://courier:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING), ManagementClient([dead, MGMT_URL], *MGMT_AUTH) as client:
        # When it reads the overview, Then the live node answers
        assert client.overview()["rabbitmq_version"]
    # And the failover was logged once, without the password
    assert "answered" in caplog.text
    assert PASSWORD not in caplog.text and quote(PASSWORD, safe="") not in caplog.text


def test_the_publisher_connects_to_the_next_node_within_the_publish_timeout():
    from app.engine.speed.amqp_async import BrokerHosts

    # Given two dead nodes before the session's broker, tried round-robin from the first
    live = f"{AMQP_HOST}:5672"
    found = settings(
        rabbitmq_hosts=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()},{live}",
        rabbitmq_user=MGMT_AUTH[0],
        rabbitmq_password=MGMT_AUTH[1],
        rabbitmq_vhost=VHOST,
        queue_type="quorum",
        broker_failover_strategy="round-robin",
    )
    hosts = BrokerHosts(found)

    async def connect() -> str:
        connection = await hosts.connect(3.0)
        try:
            return f"{connection.url.host}:{connection.url.port}"
        finally:
            await connection.close()

    # When it connects, Then it reaches the live node, and the next connection starts after it
    assert asyncio.run(connect()) == live
    assert hosts._next == 0


def test_connect_any_tries_every_node_once_and_reaches_the_live_one_whatever_the_shuffle_draws():
    from app.rabbitmq import broker_connection, connect_any

    # Given two dead nodes before the session's broker, in the default `shuffle` order (kombu's own shuffle draws
    # with replacement: three tries of it missed the live node in about half the calls here)
    found = settings(
        rabbitmq_hosts=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()},{AMQP_HOST}:5672",
        rabbitmq_user=MGMT_AUTH[0],
        rabbitmq_password=MGMT_AUTH[1],
        rabbitmq_vhost=VHOST,
        queue_type="quorum",
    )
    # When the health check, the recorder or an operations command connects, again and again
    for _ in range(20):
        with broker_connection(found, connect_timeout=2.0) as conn:
            # Then every call reaches the live node
            connect_any(conn, found)
            assert conn.connected and conn.port == 5672
