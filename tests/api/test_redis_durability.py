"""Redis persistence is a checked requirement: production refuses a Redis that persists nothing,
development says so loudly, and health reports it. Each case runs on a redis-server of the test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import httpx

from tests.support.api import ApiProcess
from tests.support.processes import OwnRedis
from tests.support.session import ROOT, join

#: Production settings that pass every other guard rail (no development placeholder secrets).
PRODUCTION = {
    "ENVIRONMENT": "production",
    "RABBITMQ_PASSWORD": "p" * 24,
    "FLOWER_PASSWORD": "f" * 24,
    "DATA_ENCRYPTION_KEYS": "cHJvZHVjdGlvbi1rZXktZm9yLWNvbmZpZy10ZXN0cyE=",
    "IDENTITY_SECRET_KEY": "i" * 32,
    "CONSOLE_SESSION_SECRET": "c" * 32,
}


def _env(server: OwnRedis, **extra: str) -> dict[str, str]:
    return {"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": "", **extra}


def _backend_health(api: ApiProcess) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{api.base}/api/v1/tasks/health", timeout=30)
    return response.status_code, response.json()["components"]["result_backend"]


def test_in_production_the_api_refuses_to_start_on_a_redis_without_persistence_and_names_the_fix(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess]
):
    # Given a Redis that persists nothing, When a production API starts on it
    server = own_redis(appendonly=False)
    api = api_process(_env(server, **PRODUCTION), wait=False)
    # Then it exits, and its log says why and how to fix it
    api.process.wait(60)
    assert api.process.returncode != 0
    log = api.log()
    assert "persists nothing" in log and "appendonly yes" in log and "REDIS_ACCEPT_NO_PERSISTENCE" in log, log[-3000:]
    assert "Application startup failed" in log


def test_in_production_the_worker_and_the_recorder_refuse_a_redis_without_persistence(
    own_redis: Callable[..., OwnRedis], start_worker
):
    server = own_redis(appendonly=False)
    env = _env(server, **PRODUCTION)
    # When a production worker starts on it, Then it exits with EX_CONFIG and names the fix
    worker = start_worker(env=env, wait=False)
    assert worker.process.wait(90) == 78, worker.log()[-3000:]
    assert "appendonly yes" in worker.log()
    # And so does the recorder
    recorder = subprocess.run(
        [sys.executable, "-m", "app.recorder"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert recorder.returncode == 78, recorder.stderr[-3000:]
    assert "appendonly yes" in recorder.stdout + recorder.stderr


def test_in_production_health_counts_a_redis_that_stops_persisting_as_down(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess]
):
    # Given a production API on a Redis with the append-only file on: it starts, and the result backend is up
    server = own_redis(appendonly=True)
    api = api_process(_env(server, **PRODUCTION))
    status, backend = _backend_health(api)
    assert backend["status"] == "up", backend
    assert "persistence" not in str(backend.get("detail"))

    # When that Redis stops persisting (the test's own server)
    server.client().config_set("appendonly", "no")

    # Then health is 503, the result backend down, and the detail says what it risks and how to fix it
    status, backend = _backend_health(api)
    assert status == 503
    assert backend["status"] == "down"
    assert "persistence off: accepted tasks can be lost if Redis restarts" in str(backend["detail"])
    assert "appendonly yes" in str(backend["detail"])


def test_in_development_a_redis_without_persistence_is_a_loud_warning_at_start_and_in_health(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess]
):
    # Given a Redis that persists nothing, When a development API starts on it
    server = own_redis(appendonly=False)
    api = api_process(_env(server, ENVIRONMENT="development"))
    # Then it starts, says so once in its log, and health reports it (up: it is a warning outside production)
    status, backend = _backend_health(api)
    assert backend["status"] == "up"
    assert "persistence off: accepted tasks can be lost if Redis restarts" in str(backend["detail"])
    join(lambda: "persists nothing" in api.log(), timeout=10, what="the start-up warning")
    assert api.log().count("persists nothing") == 1
    assert "appendonly yes" in api.log()
