"""Health: every component up gives 200; a wrong broker URL gives 503, and so does a dispatch, promptly."""

from __future__ import annotations

import httpx

from tests.support.api import ApiProcess, auth
from tests.support.processes import free_port
from tests.support.session import VAR_DIR


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


def test_with_a_wrong_broker_url_health_is_503_and_a_dispatch_is_503_with_retry_after(admin_key):
    # Given an API process whose broker URL points at a port where nothing listens
    env = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/nowhere"}
    with ApiProcess(env, log_path=VAR_DIR / "api-broken.log", ready_path="/docs") as api:
        base = api.base
        api.wait_listening()
        # When health is asked, Then the broker is reported down and the answer is 503
        health = httpx.get(f"{base}/api/v1/tasks/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["components"]["broker"]["status"] == "down"
        # When a task is dispatched, Then it is refused with 503 and Retry-After within the client's timeout
        response = httpx.post(f"{base}/api/v1/tasks/ping", json={}, headers=auth(admin_key), timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["code"] == "unavailable"
