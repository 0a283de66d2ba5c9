"""`python -m app.cli topology migrate`: classic queues rebuilt as quorum queues with every message kept.

Runs on the shared single-node RabbitMQ, in a vhost of its own (a quorum queue on one node is a valid queue of
one replica): the migration is the same on one node as on three, and needs no cluster to prove it loses nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import amqp
import pytest

from app.config import Settings
from app.engine import topology
from app.engine.migration import MigrationRefused, migrate
from tests.support.services import AMQP_HOST, MGMT_AUTH, MGMT_URL, VHOST, mgmt
from tests.support.session import ROOT

MIGRATION_VHOST = f"{VHOST}_migration"
#: Messages left in a work queue, a delay queue and the dead-letter queue before the migration.
PLANTED = {"high": 30, "delay.low.600": 5, "dead_letter": 4}


def settings_for(queue_type: str) -> Settings:
    url = f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{MIGRATION_VHOST}"
    return Settings(_env_file=None, celery_broker_url=url, rabbitmq_management_url=MGMT_URL, queue_type=queue_type)  # type: ignore[call-arg]


@pytest.fixture
def classic_vhost() -> Iterator[Settings]:
    assert mgmt("PUT", f"/vhosts/{MIGRATION_VHOST}").status_code in (201, 204)
    mgmt("PUT", f"/permissions/{MIGRATION_VHOST}/{MGMT_AUTH[0]}", json={"configure": ".*", "write": ".*", "read": ".*"})
    settings = settings_for("classic")
    topology.declare(settings)
    yield settings
    mgmt("DELETE", f"/vhosts/{MIGRATION_VHOST}")


def channel() -> amqp.Channel:
    connection = amqp.Connection(
        host=f"{AMQP_HOST}:5672",
        userid=MGMT_AUTH[0],
        password=MGMT_AUTH[1],
        virtual_host=MIGRATION_VHOST,
        confirm_publish=True,
    )
    connection.connect()
    return connection.channel()


def plant() -> dict[str, set[str]]:
    """Publish PLANTED messages straight into their queues (default exchange), each body naming itself."""
    ch = channel()
    bodies: dict[str, set[str]] = {}
    for queue, count in PLANTED.items():
        bodies[queue] = {json.dumps({"queue": queue, "n": n}) for n in range(count)}
        for body in bodies[queue]:
            ch.basic_publish(amqp.Message(body, delivery_mode=2, priority=7), exchange="", routing_key=queue)
    ch.connection.close()
    return bodies


def read_all(queue: str) -> set[str]:
    ch = channel()
    found = set()
    while (message := ch.basic_get(queue, no_ack=True)) is not None:
        found.add(message.body if isinstance(message.body, str) else message.body.decode())
    ch.connection.close()
    return found


def queue_types() -> dict[str, str]:
    return {q["name"]: q.get("type", "classic") for q in mgmt("GET", f"/queues/{MIGRATION_VHOST}").json()}


def test_migrating_classic_queues_to_quorum_keeps_every_message_and_changes_every_queue(classic_vhost):
    # Given the classic topology with messages waiting in a work queue, a delay queue and the dead-letter queue
    planted = plant()
    assert set(queue_types().values()) == {"classic"}
    # When the configuration says quorum and the migration runs
    done = migrate(settings_for("quorum"))
    # Then every Courier queue is quorum, no holding queue is left, and the topology verifies clean
    types = queue_types()
    assert {name for name, kind in types.items() if kind != "quorum"} == set(), types
    assert not [name for name in types if name.endswith(".migrating")]
    assert topology.verify(settings_for("quorum")) == []
    assert {m.name for m in done} == {q.name for q in topology.queues(settings_for("quorum"))}
    # And every planted message is in its queue again, exactly once
    for queue, bodies in planted.items():
        assert read_all(queue) == bodies, queue
    assert sum(m.messages for m in done) == sum(PLANTED.values())


def test_the_migration_refuses_while_a_worker_consumes_a_queue_it_would_rebuild(classic_vhost):
    # Given a consumer on the high queue
    ch = channel()
    ch.basic_consume("high", callback=lambda message: None)
    planted = plant()
    try:
        # When the migration runs, Then it refuses and changes nothing
        with pytest.raises(MigrationRefused, match="high"):
            migrate(settings_for("quorum"))
        assert set(queue_types().values()) == {"classic"}
    finally:
        ch.connection.close()
    assert read_all("delay.low.600") == planted["delay.low.600"]


def test_the_cli_migrates_and_then_says_the_topology_is_quorum(classic_vhost):
    # Given messages in the classic queues
    planted = plant()
    env = {
        "CELERY_BROKER_URL": f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{MIGRATION_VHOST}",
        "QUEUE_TYPE": "quorum",
    }
    import os

    # When the operator's command runs
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "topology", "migrate"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then it exits 0, names what it rebuilt, and every message is still there
    assert result.returncode == 0, result.stderr
    assert "high: {'x-max-priority': 10} -> quorum, 30 message(s) kept" in result.stderr
    assert read_all("high") == planted["high"]
