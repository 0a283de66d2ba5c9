"""Health: every component up gives 200; a wrong broker URL gives 503, and so does a dispatch, promptly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx

from tests.conftest import ROOT, VAR_DIR, auth, join


def test_health_is_200_with_every_component_up_and_needs_no_key(api, worker):
    response = api.get("/api/v1/tasks/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "up"
    assert set(body["components"]) == {"broker", "result_backend", "database", "workers"}
    assert all(
        c["status"] == "up" and c["latency_ms"] is not None for k, c in body["components"].items() if k != "workers"
    )
    assert "guest" not in response.text and "amqp://" not in response.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_with_a_wrong_broker_url_health_is_503_and_a_dispatch_is_503_with_retry_after(admin_key):
    # Given an API process whose broker URL points at a port where nothing listens
    port = _free_port()
    env = {**os.environ, "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{_free_port()}/nowhere"}
    log = open(VAR_DIR / "api-broken.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(f"{base}/docs", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        join(up, what="the API to listen")
        # When health is asked, Then the broker is reported down and the answer is 503
        health = httpx.get(f"{base}/api/v1/tasks/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["components"]["broker"]["status"] == "down"
        # When a task is dispatched, Then it is refused with 503 and Retry-After within the client's timeout
        response = httpx.post(f"{base}/api/v1/tasks/ping", json={}, headers=auth(admin_key), timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["code"] == "unavailable"
    finally:
        api.terminate()
        api.wait(10)
        log.close()
