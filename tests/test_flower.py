"""Flower as start_tasks.sh runs it: basic auth, persistent state, our workers and task names."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support.api import auth
from tests.support.processes import ServiceProcess, free_port
from tests.support.services import MGMT_URL
from tests.support.session import ROOT, VAR_DIR, join

USER, PASSWORD = "ops", "flower-test-pass"


def flower_command(port: int, **env: str) -> list[str]:
    """Flower's command line exactly as start_tasks.sh builds it (its `service_command flower`), for `env`."""
    script = (
        f'source "{ROOT / "scripts" / "start_tasks.sh"}"; apply_defaults; service_command flower; '
        'printf "%s\\0" "${SERVICE_CMD[@]}"'
    )
    environment = {**os.environ, "API_HOST": "127.0.0.1", "FLOWER_PORT": str(port), "VAR_DIR": str(VAR_DIR), **env}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=environment, check=True)
    return result.stdout.rstrip("\0").split("\0")


@contextmanager
def running_flower(**env: str) -> Iterator[str]:
    """Flower started the way start_tasks.sh starts it (its command line; credentials in the environment), with a
    state file of its own."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environ.update(env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}", FLOWER_BROKER_API=f"{MGMT_URL}/api/")
    command = flower_command(port, VAR_DIR=tempfile.mkdtemp(prefix="flower-", dir=VAR_DIR), **env)
    url = f"http://127.0.0.1:{port}"
    flower = ServiceProcess(
        command, env=environ, log_path=VAR_DIR / "flower.log", ready_url=f"{url}/healthcheck", what="Flower"
    )
    with flower:
        flower.wait_listening(timeout=60)
        yield url


@pytest.fixture
def flower() -> Iterator[str]:
    """Flower as start_tasks.sh runs it, with the environment's settings (task events off)."""
    with running_flower() as url:
        yield url


def test_flower_needs_its_password_and_lists_our_worker_with_its_task_names(flower: str, worker: Any) -> None:
    # When Flower is asked without credentials, Then it refuses
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401

    # When it is asked with them, Then it lists our worker, the tiers it consumes and Courier's task names
    def listed() -> dict[str, Any] | None:
        response = httpx.get(f"{flower}/api/workers", params={"refresh": 1}, auth=(USER, PASSWORD), timeout=15)
        assert response.status_code == 200
        return response.json().get(worker.hostname) or None

    found = join(listed, timeout=30, what="Flower to list the worker")
    assert {"system.ping", "deadletters.replay_bulk"} <= set(found["registered"])
    assert {q["name"] for q in found["active_queues"]} == {"high", "medium", "low"}
    # And its broker page (queue lengths, read through the management API) shows the tiers
    broker = httpx.get(f"{flower}/broker", auth=(USER, PASSWORD), timeout=15)
    assert broker.status_code == 200
    assert all(f">{tier}<" in broker.text for tier in ("high", "medium", "low")), broker.text[-2000:]


#: What a worker logs when a remote control command (Flower's, every 5 s) turns its task events on.
EVENTS_ENABLED_LINE = "Events of group {task} enabled by remote"
#: How often Flower sends that command (flower.events.Events.events_enable_interval, in ms).
FLOWER_ENABLE_INTERVAL_S = 5.0


def _listed(url: str, hostname: str) -> bool:
    response = httpx.get(f"{url}/api/workers", params={"refresh": 1}, auth=(USER, PASSWORD), timeout=15)
    return response.status_code == 200 and hostname in response.json()


def test_with_task_events_off_flower_as_started_by_the_script_leaves_workers_without_events(
    start_worker, api, admin_key
) -> None:
    # Given a worker, and Flower started with start_tasks.sh's command line while TASK_EVENTS_ENABLED=false
    worker = start_worker()
    with running_flower(TASK_EVENTS_ENABLED="false") as url:
        join(lambda: _listed(url, worker.hostname), timeout=30, what="Flower to list the worker")
        # When a task runs while Flower has been up for more than two of its enable-events rounds
        response = api.post("/api/v1/tasks/ping", json={}, headers=auth(admin_key))
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        join(lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS")
        time.sleep(2 * FLOWER_ENABLE_INTERVAL_S + 1)  # an absence can only be watched for a while
        # Then the worker never had its events turned on, and Flower saw no task
        assert EVENTS_ENABLED_LINE not in worker.log()
        tasks = httpx.get(f"{url}/api/tasks", auth=(USER, PASSWORD), timeout=15)
        assert tasks.status_code == 200 and tasks.json() == {}, tasks.text[:500]


def test_with_task_events_on_flower_turns_them_on_in_the_workers(start_worker) -> None:
    # Given a worker, and Flower started with start_tasks.sh's command line while TASK_EVENTS_ENABLED=true
    worker = start_worker()
    with running_flower(TASK_EVENTS_ENABLED="true"):
        # Then Flower turns the worker's task events on (the other test's absence is not a blind spot)
        join(lambda: EVENTS_ENABLED_LINE in worker.log(), timeout=30, what="Flower to enable the worker's events")
