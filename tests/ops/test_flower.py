"""Flower as start_tasks.sh runs it: basic auth, persistent state, our workers and task names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MGMT_URL, ROOT, VAR_DIR, join

USER, PASSWORD = "ops", "flower-test-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def flower() -> Iterator[str]:
    """Flower started the way start_tasks.sh starts it (credentials in the environment, not argv)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}", FLOWER_BROKER_API=f"{MGMT_URL}/api/")
    log = open(VAR_DIR / "flower.log", "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.tasks", "flower", "--address=127.0.0.1", f"--port={port}",
         "--persistent=True", f"--db={VAR_DIR / 'flower.db'}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"Flower exited: {(VAR_DIR / 'flower.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        join(answers, timeout=60, what="Flower to answer")
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


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
