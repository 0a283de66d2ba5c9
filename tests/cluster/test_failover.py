"""Losing a node under load loses no accepted task: Courier's API and workers on a three-node RabbitMQ cluster
(quorum queues) and on Redis with Sentinel, with the node that leads the work queue, then the Redis primary,
killed with SIGKILL while clients keep dispatching.

The acceptance line: every task the API answered 202 for ends SUCCESS (or visibly dead-lettered), no answer is a
5xx other than a quick 503 while a publish cannot be confirmed (the client retries it with the same
Idempotency-Key), the workers re-attach on their own, and no log line carries a password.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from tests.support.api import ApiProcess, auth, make_key
from tests.support.cluster import BROKER_PASSWORD, REDIS_PASSWORD, Cluster, Load, Outcome, final_states
from tests.support.processes import stop_process_group
from tests.support.session import ROOT, VAR_DIR, join
from tests.support.workers import WorkerProcess, spawn_worker

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

#: The API publishes over aiormq (its own connection) unless ENGINE_SPEED_PATCHES=off (Celery's producer pool).
SPEED_PATCHES = os.environ.get("ENGINE_SPEED_PATCHES", "on").lower() not in ("off", "false", "0")
#: Tasks accepted before the kill, after it, and after the node is back, per run.
BEFORE, DURING, AFTER = 40, 120, 40


class Stack:
    """The API and two medium-tier workers on the cluster."""

    def __init__(self, cluster: Cluster) -> None:
        # The API's publisher connects to the node that leads the work queue first (round-robin from it), so
        # killing that node also takes the publisher's connection: the publisher has to fail over too.
        self.leader = cluster.leader_of("medium")
        hosts = cluster.settings["RABBITMQ_HOSTS"].split(",")
        ordered = hosts[self.leader - 1 :] + hosts[: self.leader - 1]
        api_env = {**cluster.env, "RABBITMQ_HOSTS": ",".join(ordered), "BROKER_FAILOVER_STRATEGY": "round-robin"}
        self.api = ApiProcess(api_env, log_path=VAR_DIR / "cluster-api.log")
        self.workers = [
            spawn_worker(f"cluster-medium-{n}", "medium", 2, {**cluster.env, "CELERY_WORKER_POOL": "prefork"})
            for n in (1, 2)
        ]
        self.headers = auth(make_key("admin"))

    def wait_ready(self) -> None:
        self.api.wait_listening()
        for worker in self.workers:
            wait_ready(worker)

    def logs(self) -> str:
        return "\n".join([self.api.log(), *(worker.log() for worker in self.workers)])

    def stop(self) -> None:
        self.api.stop()
        for worker in self.workers:
            stop_process_group(worker.process, 30)
        # The session's scratch directory goes at its end: keep the logs for a failure's post-mortem.
        kept = ROOT / "var" / "log"
        kept.mkdir(parents=True, exist_ok=True)
        for path in (self.api.log_path, *(worker.log_path for worker in self.workers)):
            shutil.copyfile(path, kept / path.name)


def wait_ready(worker: WorkerProcess) -> None:
    def ready() -> bool:
        assert worker.process.poll() is None, f"worker {worker.name} exited:\n{worker.log()[-4000:]}"
        return "ready." in worker.log()

    join(ready, timeout=90, what=f"worker {worker.name} to be ready")


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    running = Stack(cluster)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def publisher_nodes(cluster: Cluster) -> set[int]:
    """The nodes (1-3) that hold the API publisher's connections (aiormq's, as the management API lists them)."""
    connections = cluster.management("/connections")
    return {
        int(c["node"].split("@")[0].rsplit("-", 1)[1])
        for c in connections
        if "aiormq" in str(c.get("client_properties", {}).get("product", "")).lower()
    }


def report(request: pytest.FixtureRequest, what: str, outcome: Outcome, states: dict[str, str]) -> None:
    """The run's figures on the terminal (the closing note quotes them) and in the JUnit properties."""
    succeeded = sum(1 for state in states.values() if state == "SUCCESS")
    dead = sum(1 for state in states.values() if state == "DEAD_LETTERED")
    lost = len(outcome.accepted) - succeeded - dead
    line = (
        f"{what}: accepted {len(outcome.accepted)}, succeeded {succeeded}, dead-lettered {dead}, lost {lost}; "
        f"503s {outcome.unavailable}, 409s {outcome.conflicts}, other 5xx {len(outcome.server_errors)}, "
        f"dropped connections {outcome.transport_errors}; longest dispatch {outcome.longest_s:.2f} s"
    )
    request.node.user_properties.append(("failover", line))
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        sys.stdout.write(f"\n{line}\n")
    with open(ROOT / "var" / "log" / "cluster-failover.log", "a") as log:  # kept after the session
        log.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")


def assert_nothing_lost(outcome: Outcome, states: dict[str, str]) -> None:
    assert outcome.server_errors == [], outcome.server_errors[:5]
    lost = {task: state for task, state in states.items() if state not in ("SUCCESS", "DEAD_LETTERED")}
    assert lost == {}, f"{len(lost)} accepted task(s) did not end: {list(lost.items())[:10]}"
    assert set(states) == set(outcome.accepted)


def assert_no_password(text: str) -> None:
    for secret in (BROKER_PASSWORD, REDIS_PASSWORD):
        for form in {secret, quote(secret, safe=""), quote(quote(secret, safe=""), safe="")}:
            assert form not in text, f"a log carries the password (as {form!r})"


def test_killing_the_node_that_leads_the_work_queue_loses_no_accepted_task(request, cluster, stack):
    # Given clients dispatching steadily through the API to the medium tier's quorum queue
    with Load(stack.api.base, stack.headers) as load:
        join(lambda: load.accepted() >= BEFORE, timeout=90, what="the first dispatches")
        # When the node that leads the queue (and holds the API's publishing connection) is killed with SIGKILL
        leader = cluster.leader_of("medium")
        assert leader == stack.leader
        if SPEED_PATCHES:  # (stock mode publishes through Celery's producer pool, one connection among many)
            join(lambda: publisher_nodes(cluster) == {leader}, timeout=30, what="the publisher's connection listed")
        cluster.kill_node(leader)
        killed_at = load.accepted()
        join(lambda: load.accepted() >= killed_at + DURING, timeout=120, what="dispatches to go on after the kill")
        # And brought back while the load goes on
        cluster.start_node(leader)
        back_at = load.accepted()
        join(lambda: load.accepted() >= back_at + AFTER, timeout=60, what="dispatches after the node returned")
    outcome = load.stop()
    # Then every accepted task ends, none lost, and no answer was a 5xx other than 503
    states = final_states(stack.api.base, stack.headers, outcome.accepted, timeout=180)
    report(request, f"RabbitMQ leader (node {leader}) killed", outcome, states)
    assert_nothing_lost(outcome, states)
    # And a new leader took the queue, the workers are attached again on their own, and the cluster is whole
    assert cluster.leader_of("medium") in (1, 2, 3)
    join(
        lambda: cluster.management("/queues/courier_cluster/medium").get("consumers") == 2,
        timeout=60,
        what="both workers to consume the medium queue again",
    )
    assert all(worker.process.poll() is None for worker in stack.workers)
    assert cluster.courier("topology", "verify").returncode == 0
    # And the API's publisher moved to another node
    if SPEED_PATCHES:
        join(lambda: publisher_nodes(cluster) - {leader}, timeout=30, what="the API's publisher on a surviving node")
    # And no log line of the API or the workers carries a password while failing over
    assert_no_password(stack.logs())


def test_killing_the_redis_primary_loses_no_accepted_task(request, cluster, stack):
    # Given clients dispatching steadily, task state in the Redis primary the Sentinels name
    with Load(stack.api.base, stack.headers) as load:
        join(lambda: load.accepted() >= BEFORE, timeout=90, what="the first dispatches")
        # When the primary is killed with SIGKILL
        port = cluster.primary_port()
        assert port is not None
        number = cluster.redis_number(port)
        cluster.kill_redis(number)
        killed_at = load.accepted()
        join(
            lambda: cluster.primary_port() not in (None, port), timeout=60, what="the Sentinels to promote the replica"
        )
        join(lambda: load.accepted() >= killed_at + DURING, timeout=120, what="dispatches to go on after the kill")
    outcome = load.stop()
    # Then every accepted task ends in the new primary, none lost, and no answer was a 5xx other than 503
    states = final_states(stack.api.base, stack.headers, outcome.accepted, timeout=180)
    report(request, "Redis primary killed", outcome, states)
    assert_nothing_lost(outcome, states)
    # And the old primary comes back as a replica of the new one; the workers never left
    cluster.start_redis(number)
    assert cluster.primary_port() not in (None, port)
    assert all(worker.process.poll() is None for worker in stack.workers)
    assert_no_password(stack.logs())
