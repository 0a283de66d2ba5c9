"""Health and dispatch across a Redis outage and restart, on a Redis the test owns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.api import ApiProcess, auth
from tests.support.processes import OwnRedis
from tests.support.session import join

HEALTH = "/api/v1/tasks/health"


def _health(api: ApiProcess) -> httpx.Response:
    return httpx.get(f"{api.base}{HEALTH}", timeout=30)


def test_health_is_503_with_redis_components_down_while_redis_is_down_and_200_when_it_returns(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess], start_worker
):
    # Given an API and a worker whose Redis is a server of the test's own, and health says 200
    server = own_redis()
    env = {"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": ""}
    worker = start_worker(env=env, wait=False)
    join(lambda: "ready." in worker.log() and server.client().exists(f"courier:worker:{worker.hostname}"),
         timeout=60, what="the worker to be ready")  # fmt: skip
    api = api_process(env)
    first = join(lambda: (r := _health(api)).status_code == 200 and r, timeout=30, what="health to be 200")
    assert first.json()["components"]["result_backend"]["status"] == "up"

    # When Redis dies
    server.kill()

    # Then health answers 503 (not 500), promptly, with the result backend and the workers down, as JSON
    for _ in range(3):  # every call, not only the first
        started = time.monotonic()
        response = _health(api)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "down"
        assert body["components"]["result_backend"]["status"] == "down"
        assert body["components"]["workers"]["status"] == "down"
        assert body["components"]["broker"]["status"] == "up"
        assert body["components"]["database"]["status"] == "up"
        assert elapsed < 10, f"health took {elapsed:.1f} s during the outage"
    assert "Traceback" not in api.log()

    # When Redis comes back, Then health is 200 again (the worker's heartbeat resumes)
    server.start()
    join(lambda: _health(api).status_code == 200, timeout=30, what="health to be 200 again")


def test_health_answers_within_its_deadline_while_redis_hangs(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess]
):
    # Given an API whose Redis is a server of the test's own
    server = own_redis()
    api = api_process({"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": ""})
    assert _health(api).json()["components"]["result_backend"]["status"] == "up"

    # When that Redis hangs (it accepts connections and never answers)
    server.pause()
    try:
        # Then health still answers, 503, with the Redis components down, and the other checks are not held up
        started = time.monotonic()
        response = _health(api)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        components = response.json()["components"]
        assert components["result_backend"]["status"] == "down"
        assert components["workers"]["status"] == "down"
        assert components["broker"]["status"] == "up" and components["database"]["status"] == "up"
        assert elapsed < 10, f"health took {elapsed:.1f} s while Redis hung"
    finally:
        server.resume()
    # And once it answers again, so does the result backend
    join(lambda: _health(api).json()["components"]["result_backend"]["status"] == "up", what="Redis to be up")


async def _burst(api: ApiProcess, key: tuple[str, str], count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=api.base, timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/api/v1/tasks/ping", json={}, headers=auth(key)) for _ in range(count))
        )


def test_a_burst_of_dispatches_after_a_redis_restart_is_all_202(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess], admin_key
):
    # Given an API whose Redis is a server of the test's own, with pooled connections from a first burst
    server = own_redis()
    api = api_process({"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": ""})
    before = asyncio.run(_burst(api, admin_key, 50))
    assert [r.status_code for r in before] == [202] * 50, before[0].text

    # When Redis restarts (its pooled connections die with it) and the API stays idle a moment
    server.restart()
    time.sleep(3)

    # Then a burst of dispatches is accepted in full: dead connections are replaced, not reported as an outage
    after = asyncio.run(_burst(api, admin_key, 100))
    refused = [r for r in after if r.status_code != 202]
    assert not refused, f"{len(refused)} of 100 refused, e.g. {refused[0].status_code} {refused[0].text}"


def test_dispatches_while_redis_is_down_are_503_and_the_outage_is_logged_once_each_way(
    own_redis: Callable[..., OwnRedis], api_process: Callable[..., ApiProcess], admin_key
):
    # Given an API whose Redis is a server of the test's own, dispatching
    server = own_redis()
    api = api_process({"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": ""})
    assert [r.status_code for r in asyncio.run(_burst(api, admin_key, 5))] == [202] * 5

    # When Redis is down, Then every dispatch is refused with 503 (after the client's retries), not a 500
    server.kill()
    down = asyncio.run(_burst(api, admin_key, 30))
    assert {r.status_code for r in down} == {503}
    assert all(r.headers["retry-after"].isdigit() for r in down)

    # When Redis is back, Then dispatches are accepted again
    server.start()
    assert [r.status_code for r in asyncio.run(_burst(api, admin_key, 5))] == [202] * 5
    # And the log says the outage began once and ended once, not a line per refused request
    log = api.log()
    assert log.count("Redis is down:") == 1, log[-3000:]
    assert log.count("Redis is back after") == 1, log[-3000:]


@pytest.mark.parametrize("why", ["memory", "disk"])
def test_a_redis_that_answers_but_refuses_writes_is_down_in_health(own_redis: Callable[..., OwnRedis], why: str):
    from app.config import Settings
    from app.health import check_redis

    # Given a Redis of the test's own that answers PING but refuses every write (maxmemory reached, or a full disk)
    server = own_redis()
    settings = Settings(celery_result_backend=server.url, redis_url="")
    assert check_redis(settings).status == "up"
    server.refuse_writes(why)
    # When health probes it, Then the result backend is down, saying why (a dispatch could store no task meta)
    found = check_redis(settings)
    assert found.status == "down", found
    assert ("OutOfMemoryError" if why == "memory" else "PersistenceError") in (found.detail or ""), found.detail
    # And once it takes writes again, it is up
    server.accept_writes()
    assert check_redis(settings).status == "up"


def test_a_broker_under_a_resource_alarm_is_down_in_health(receiver):
    import json

    from app.config import get_settings
    from app.health import check_broker

    # Given the broker's management API reporting a memory alarm on one node (a stand-in for RabbitMQ's management
    # API: raising a real alarm on the shared node would block every other publisher on this machine)
    nodes = [{"name": "rabbit@a", "mem_alarm": True, "disk_free_alarm": False}, {"name": "rabbit@b"}]
    management = receiver(script=[(200, {"Content-Type": "application/json"}, json.dumps(nodes).encode())])
    settings = get_settings().model_copy(update={"rabbitmq_management_url": management.url})
    # When health probes the broker (whose AMQP port answers), Then it is down, naming the alarm
    found = check_broker(settings)
    assert (found.status, found.detail) == (
        "down",
        "memory alarm on rabbit@a: RabbitMQ blocks every publish until it clears",
    )
    assert management.received[-1].path == "/api/nodes"
