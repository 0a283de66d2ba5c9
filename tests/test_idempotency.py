"""The Idempotency-Key protocol on its own (app/idempotency.py), against the session's Redis."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import idempotency
from app.errors import Conflict, ServiceUnavailable, Unprocessable
from tests.support.processes import free_port


class Action:
    """Counts its runs; answers with the run's number, or fails while `failing` is set."""

    def __init__(self) -> None:
        self.runs = 0
        self.failing = False

    async def __call__(self) -> dict[str, Any]:
        self.runs += 1
        if self.failing:
            raise RuntimeError("the action failed")
        return {"run": self.runs}


def _once(action: Action, *, key: str | None, body: Any, **kwargs: Any) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        return await idempotency.once(owner="tester", key=key, route="test.once", body=body, action=action, **kwargs)

    return anyio.run(call)


def test_a_repeat_with_the_same_key_and_body_gets_the_first_answer_without_running_again():
    # Given an action and a fresh key
    action, key = Action(), uuid.uuid4().hex
    # When the same request is made twice with the key
    first = _once(action, key=key, body={"a": 1})
    second = _once(action, key=key, body={"a": 1})
    # Then the action ran once and both got its answer
    assert (first, second, action.runs) == ({"run": 1}, {"run": 1}, 1)
    # And another body with the same key is refused, without running
    with pytest.raises(Unprocessable):
        _once(action, key=key, body={"a": 2})
    assert action.runs == 1


def test_two_owners_never_share_a_key_even_when_a_name_holds_the_separator():
    # Given owner `svc:prod` whose request with key `k` was served
    action, key = Action(), uuid.uuid4().hex

    async def call(owner: str, key: str) -> dict[str, Any]:
        return await idempotency.once(owner=owner, key=key, route="test.once", body={}, action=action)

    assert anyio.run(call, "svc:prod", key) == {"run": 1}
    # When owner `svc` sends the same request with key `prod:k`, which joined with ':' reads the same
    # Then its action runs on its own and it gets its own answer, not the other owner's
    assert anyio.run(call, "svc", "prod:" + key) == {"run": 2}
    assert action.runs == 2


def test_without_a_key_the_action_runs_every_time():
    action = Action()
    assert [_once(action, key=None, body={}) for _ in range(2)] == [{"run": 1}, {"run": 2}]


def test_a_failed_first_attempt_releases_the_key_so_the_client_may_retry_with_it():
    # Given a first attempt whose action fails
    action, key = Action(), uuid.uuid4().hex
    action.failing = True
    with pytest.raises(RuntimeError):
        _once(action, key=key, body={})
    # When the client retries with the same key, Then the action runs again and its answer is the one kept
    action.failing = False
    assert _once(action, key=key, body={}) == {"run": 2}
    assert _once(action, key=key, body={}) == {"run": 2}


def test_a_request_whose_first_attempt_is_still_running_is_a_conflict():
    # Given a key claimed by a request still in flight
    key = uuid.uuid4().hex
    assert idempotency.begin(owner="tester", key=key, digest=idempotency.fingerprint("test.once", {})) is None
    # When the same request comes again, Then it is told to retry shortly, and nothing ran
    action = Action()
    with pytest.raises(Conflict):
        _once(action, key=key, body={})
    assert action.runs == 0


def test_an_unreachable_store_raises_the_callers_error_and_runs_nothing(monkeypatch):
    # Given an idempotency store whose Redis is a port where nothing listens
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(idempotency, "get_redis", lambda: dead)
    action, seen = Action(), []

    def unreachable(exc: redis.RedisError) -> Exception:
        seen.append(exc)
        return ServiceUnavailable("down")

    # When a keyed request comes, Then the caller's error is raised, built from Redis's, and the action never ran
    with pytest.raises(ServiceUnavailable, match="down"):
        _once(action, key=uuid.uuid4().hex, body={}, unreachable=unreachable)
    assert action.runs == 0 and isinstance(seen[0], redis.ConnectionError)
    # And by default the answer is a 503 that says nothing was done
    with pytest.raises(ServiceUnavailable, match="nothing was done"):
        _once(action, key=uuid.uuid4().hex, body={})


def test_an_action_that_succeeded_keeps_its_answer_when_redis_goes_away_before_it_is_stored(monkeypatch):
    # Given a keyed request whose action succeeds (a dispatch RabbitMQ confirmed), and Redis lost just after it
    # (a Sentinel failover under load: measured 3 such answers per failover at 35 req/s)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    action = Action()

    async def dispatched_then_redis_lost() -> dict[str, Any]:
        answer = await action()
        monkeypatch.setattr(idempotency, "get_redis", lambda: dead)
        return answer

    # When the answer cannot be stored, Then the client still gets the action's answer, not a 503 "nothing was done"
    answer = anyio.run(
        lambda: idempotency.once(
            owner="tester", key=uuid.uuid4().hex, route="test.once", body={}, action=dispatched_then_redis_lost
        )
    )
    assert answer == {"run": 1} and action.runs == 1


def test_a_failed_action_keeps_its_own_error_when_redis_goes_away_before_the_key_is_released(monkeypatch):
    # Given a keyed request whose action fails (the broker did not confirm), and Redis lost meanwhile
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))

    async def refused_and_redis_lost() -> dict[str, Any]:
        monkeypatch.setattr(idempotency, "get_redis", lambda: dead)
        raise ServiceUnavailable("The message broker did not confirm the task; nothing was dispatched.")

    # Then the client gets the action's error, not Redis's
    with pytest.raises(ServiceUnavailable, match="did not confirm"):
        anyio.run(
            lambda: idempotency.once(
                owner="tester", key=uuid.uuid4().hex, route="test.once", body={}, action=refused_and_redis_lost
            )
        )
