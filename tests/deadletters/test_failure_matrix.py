"""The failure matrix on the real broker: every way a message can fail ends as exactly one dead letter with
the right reason, the worker keeps running, and nothing is lost or duplicated."""

from __future__ import annotations

import json
import uuid
import zlib

import pika
import pytest

from app.config import get_settings
from app.engine import topology
from tests.support.api import auth, dispatch, finished, letters, one_letter
from tests.support.services import AMQP_HOST, MGMT_AUTH, VHOST, heartbeat, queue_depth, redis_client
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("empty_queues")


def _attempts(api, key, letter_id):
    return api.get(f"/api/v1/tasks/dead-letters/{letter_id}", headers=auth(key)).json()["attempts"]


def _publish_raw(
    body: bytes, *, headers: dict | None, content_type: str | None = "application/json", routing_key: str = "high"
) -> None:
    """Publish with pika, a real AMQP client outside Celery."""
    params = pika.URLParameters(f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{VHOST}")
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "courier.tasks",
            routing_key,
            body,
            pika.BasicProperties(headers=headers, content_type=content_type, content_encoding="utf-8", delivery_mode=2),
        )
    finally:
        connection.close()


def test_a_transient_error_is_retried_with_backoff_then_dead_lettered_with_every_attempts_error(
    api, admin_key, start_worker, recorder
):
    # Given a worker (tests run with 2 retries, 1 s backoff, 2 s cap)
    start_worker("medium", concurrency=1)
    # When a task fails transiently on every attempt
    task_id = dispatch(api, admin_key, fail="transient")
    # Then after 1 + 2 attempts there is one dead letter, reason retries_exhausted, with each attempt's error
    letter = one_letter(api, admin_key, task_id)
    assert letter["reason"] == "retries_exhausted"
    assert letter["error_class"] == "TransientError"
    assert letter["retries"] == 2 and letter["queue"] == "medium"
    join(lambda: len(_attempts(api, admin_key, letter["id"])) == 3, what="three attempts to be recorded")
    letter = api.get(f"/api/v1/tasks/dead-letters/{letter['id']}", headers=auth(admin_key)).json()
    errors = [a["error"] for a in letter["attempts"]]
    assert len(errors) == 3
    assert [a["outcome"] for a in letter["attempts"]] == ["retried", "retried", "failed"]
    assert all("asked to fail transiently" in e for e in errors)
    assert letter["headers"]["x-death"][0]["queue"] == "medium"
    # And the task's status says where it ended
    task = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()
    assert task["state"] == "DEAD_LETTERED"
    assert task["dead_letter"]["reason"] == "retries_exhausted"
    assert task["dead_letter"]["url"] == f"/api/v1/tasks/dead-letters/{letter['id']}"


def test_a_non_retryable_error_is_dead_lettered_at_once(api, admin_key, start_worker, recorder):
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent")
    letter = one_letter(api, admin_key, task_id)
    assert (letter["reason"], letter["error_class"], letter["retries"]) == ("failed", "PermanentError", 0)
    # (the attempt comes from the worker's task events, which may reach the recorder a moment later)
    join(lambda: _attempts(api, admin_key, letter["id"]), what="the attempt to be recorded")
    assert len(_attempts(api, admin_key, letter["id"])) == 1
    assert "Traceback" in letter["traceback"]


@pytest.mark.parametrize(("fail", "error_class"), [("none", "SoftTimeLimitExceeded"), ("hang", "TimeLimitExceeded")])
def test_a_time_limit_dead_letters_with_reason_timeout_and_never_acks_silently(
    api, admin_key, start_worker, recorder, fail, error_class
):
    # Given a task that overruns a 1 s soft limit (and, when it hangs, ignores it until the 2 s hard limit)
    worker = start_worker("high", concurrency=1)
    task_id = dispatch(api, admin_key, tier="high", sleep_s=6, fail=fail, soft_time_limit_s=1, time_limit_s=2)
    # Then it is dead-lettered as a timeout, with the limit that struck, and the worker lives on
    letter = one_letter(api, admin_key, task_id)
    assert (letter["reason"], letter["error_class"]) == ("timeout", error_class)
    assert worker.process.poll() is None


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("billing.charge_everyone", [], {"amount": 1}),
        # Celery's own tasks are no more Courier's: `celery.map` would call system.ping inside the worker, outside
        # its message's start check and revocation (the attacker's outside test ran it to SUCCESS)
        ("celery.map", [{"task": "system.ping", "args": [], "kwargs": {}, "options": {}}, [[]]], {}),
        ("celery.accumulate", [1, 2], {}),
        ("celery.backend_cleanup", [], {}),
    ],
)
def test_an_unknown_task_name_is_dead_lettered_as_unknown_task(
    api, admin_key, start_worker, recorder, name, args, kwargs
):
    worker = start_worker("high", concurrency=1)
    from app.engine.celery_app import celery_app

    task_id = str(uuid.uuid4())
    celery_app.send_task(
        name, args=args, kwargs=kwargs, task_id=task_id, queue="high", exchange="courier.tasks", routing_key="high"
    )
    letter = one_letter(api, admin_key, task_id)
    assert letter["reason"] == "unknown_task"
    assert letter["task_name"] == name
    assert worker.process.poll() is None


@pytest.mark.parametrize(
    ("case", "body", "headers", "content_type"),
    [
        ("invalid json", b"{not json", {"task": "system.ping", "id": "garbage-json"}, "application/json"),
        ("task header without id", b"[[], {}, {}]", {"task": "system.ping"}, "application/json"),
        ("no headers at all", b"hello", None, "text/plain"),
        # valid UTF-8 holding a NUL, which no SQL text column takes: the body is kept as base64
        (
            "a NUL in the body",
            b'[[], {"a": "\x00"}, {}]',
            {"task": "system.ping", "id": "nul-body"},
            "application/json",
        ),
        # a `compression` header naming no codec, or one the body is not in: kombu cannot even build the message
        # (the recorder's consumer raised on it, got it again, and recorded nothing more, forever)
        (
            "a compression header naming no codec",
            zlib.compress(b"[[], {}, {}]"),
            {"task": "system.ping", "id": "bogus-compression", "compression": "application/x-bogus"},
            "application/json",
        ),
        (
            "a body that does not decompress",
            b"not gzip at all",
            {"task": "system.ping", "id": "not-gzip", "compression": "application/x-gzip"},
            "application/json",
        ),
        # a body validly compressed: kombu would inflate it before anyone looked (a compression bomb of a few MB
        # takes the worker down for its memory): it is refused as it arrives, never run
        (
            "a compressed body",
            zlib.compress(b"[[], {}, {}]"),
            {"task": "system.ping", "id": "gzip-body", "compression": "application/x-gzip"},
            "application/json",
        ),
        (
            "content type not accepted",
            b"\x80\x04\x95",
            {"task": "system.ping", "id": "garbage-pickle"},
            "application/x-python-serialize",
        ),
    ],
)
def test_a_malformed_message_from_an_outside_client_is_dead_lettered_and_the_worker_keeps_running(
    api, admin_key, start_worker, recorder, case, body, headers, content_type
):
    # Given a running worker
    worker = start_worker("high", concurrency=1)
    before = api.get(
        "/api/v1/tasks/dead-letters", params={"reason": "malformed", "limit": 500}, headers=auth(admin_key)
    ).json()["total"]
    # When pika publishes garbage into its queue
    _publish_raw(body, headers=headers, content_type=content_type)
    # Then exactly one more malformed dead letter is recorded
    join(
        lambda: (
            api.get(
                "/api/v1/tasks/dead-letters", params={"reason": "malformed", "limit": 500}, headers=auth(admin_key)
            ).json()["total"]
            == before + 1
        ),
        what=f"malformed letter ({case})",
    )
    # And the worker is still alive and still runs tasks
    assert worker.process.poll() is None, worker.log()[-3000:]
    assert heartbeat(worker.hostname) is not None
    task_id = dispatch(api, admin_key, tier="high", echo=case)
    join(
        lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS",
        what="a normal task after the garbage",
    )


@pytest.mark.parametrize("timelimit", [[None], "x", [1, 2, 3], ["a", "b"], [-1, 5]])
def test_a_timelimit_header_the_pool_cannot_use_is_dead_lettered_and_never_stops_the_worker(
    api, admin_key, start_worker, recorder, timelimit
):
    # Given a worker whose only pool process is busy, so the next message waits for it in the event loop
    worker = start_worker("high", concurrency=1)
    busy = dispatch(api, admin_key, tier="high", sleep_s=2)
    join(lambda: redis_client().get(f"courier:starts:{busy}:0") == "1", what="the busy task to start")
    # When pika publishes a task whose `timelimit` is not [hard, soft] seconds (Celery unpacked it only when
    # handing the task to the pool: there, in the event loop, the error stopped the worker, "Unrecoverable error",
    # and every restart took the message again)
    task_id = str(uuid.uuid4())
    headers = {"task": "system.ping", "id": task_id, "retries": 0, "timelimit": timelimit}
    _publish_raw(b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]', headers=headers)
    # Then it is one more malformed dead letter, and the worker lives on and runs tasks
    assert one_letter(api, admin_key, task_id)["reason"] == "malformed"
    assert api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "DEAD_LETTERED"
    join(lambda: finished(api, admin_key, busy), what="the busy task to finish")
    assert worker.process.poll() is None, worker.log()[-3000:]
    after = dispatch(api, admin_key, tier="high", echo="after")
    join(
        lambda: api.get(f"/api/v1/tasks/task/{after}", headers=auth(admin_key)).json()["state"] == "SUCCESS",
        what="a normal task after the bad timelimit",
    )


@pytest.mark.parametrize(
    "body",
    [b'[{"x": 1}, [], {}]', b"[[], [1], {}]", b'["abc", {}, {}]', b'[[], {}, "x"]'],
    ids=["args an object", "kwargs a list", "args a string", "embed a string"],
)
def test_a_body_whose_args_kwargs_or_embed_have_the_wrong_type_is_dead_lettered_not_acked(
    api, admin_key, start_worker, recorder, body
):
    # Given a worker
    worker = start_worker("high", concurrency=1)
    # When pika publishes a task whose body is a list of three with the wrong types (Celery's tracer met kwargs
    # that are not a mapping before it had a request to fail, returned it as a success, and the message was acked:
    # no result, no dead letter, nothing)
    task_id = str(uuid.uuid4())
    _publish_raw(body, headers={"task": "system.ping", "id": task_id, "retries": 0})
    # Then it is a malformed dead letter, and the worker goes on
    assert one_letter(api, admin_key, task_id)["reason"] == "malformed"
    assert api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "DEAD_LETTERED"
    assert worker.process.poll() is None, worker.log()[-3000:]


def test_a_task_that_crashes_its_pool_process_is_retried_a_bounded_number_of_times_then_dead_lettered(
    api, admin_key, start_worker, recorder
):
    worker = start_worker("medium", concurrency=1)
    task_id = dispatch(api, admin_key, fail="crash")
    letter = one_letter(api, admin_key, task_id, timeout=90)
    assert letter["reason"] == "worker_lost"
    assert letter["retries"] == 2
    assert worker.process.poll() is None


def test_a_message_that_kills_its_whole_worker_is_dead_lettered_after_the_bound_not_redelivered_forever(
    api, admin_key, start_worker, recorder
):
    # Given workers that allow one start per attempt
    strict = {"MAX_STARTS_PER_ATTEMPT": "1"}
    first = start_worker("low", concurrency=1, env=strict)
    task_id = dispatch(api, admin_key, tier="low", sleep_s=30)
    join(lambda: redis_client().get(f"courier:starts:{task_id}:0") == "1", what="the attempt to start")
    # When the whole worker is SIGKILLed mid-task (as the message "kills" it) and a new worker takes it
    first.kill()
    start_worker("low", concurrency=1, env=strict)
    # Then it is not run again: it is dead-lettered as worker_lost
    letter = one_letter(api, admin_key, task_id)
    assert letter["reason"] == "worker_lost"
    assert "without finishing" in letter["error"]


def test_a_message_that_expires_before_a_worker_takes_it_is_dead_lettered_as_expired(
    api, admin_key, start_worker, recorder
):
    # Given a task that must start within 1 s, and no worker for 2 s
    task_id = dispatch(api, admin_key, tier="low", expires_s=1)
    import time

    time.sleep(2)
    # When a worker finally takes it
    start_worker("low", concurrency=1)
    # Then it is not run and not dropped: one dead letter, reason expired
    letter = one_letter(api, admin_key, task_id)
    assert letter["reason"] == "expired"


def test_a_full_work_queue_refuses_the_dispatch_with_503_instead_of_dropping(api, admin_key):
    # Given the low queue capped at 2 ready messages and no worker
    settings = get_settings()
    topology.declare(settings.model_copy(update={"work_queue_max_length": 2}))
    try:
        accepted = [dispatch(api, admin_key, tier="low") for _ in range(2)]
        join(lambda: queue_depth("low")["ready"] == 2)
        # When a third is dispatched
        response = api.post("/api/v1/tasks/ping", json={"tier": "low"}, headers=auth(admin_key))
        # Then the client is told to retry, and the two accepted messages are intact
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert queue_depth("low")["ready"] == len(accepted)
    finally:
        topology.declare(settings)


def test_a_revoked_task_is_recorded_as_revoked_not_dead_lettered(api, admin_key, start_worker, recorder):
    task_id = dispatch(api, admin_key, tier="low")
    api.post(f"/api/v1/tasks/task/{task_id}/revoke", json={}, headers=auth(admin_key))
    start_worker("low", concurrency=1)
    join(lambda: queue_depth("low")["ready"] == 0)
    join(lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "REVOKED")
    assert queue_depth("dead_letter")["ready"] == 0
    assert letters(api, admin_key, task_id) == []


def test_secrets_in_arguments_never_reach_the_recorded_dead_letter(api, admin_key, start_worker, recorder):
    # Given a task message (from an outside client) carrying a secret-named argument the task does not take
    start_worker("high", concurrency=1)
    task_id = str(uuid.uuid4())
    body = json.dumps(
        [
            [],
            {"echo": "x", "password": "hunter2", "nested": {"api_key": "sk_live_123"}},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
    ).encode()
    _publish_raw(
        body,
        headers={
            "task": "system.ping",
            "id": task_id,
            "lang": "py",
            "retries": 0,
            "kwargsrepr": "{'password': 'hunter2'}",
            "argsrepr": "()",
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "origin": "outside",
        },
    )
    # Then its dead letter holds no trace of the secrets, anywhere
    letter = one_letter(api, admin_key, task_id)
    assert letter["kwargs"]["password"] == "[redacted]"
    assert letter["kwargs"]["nested"]["api_key"] == "[redacted]"
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect() as conn:
        row = conn.execute(text("SELECT * FROM dead_letters WHERE task_id = :t"), {"t": task_id}).mappings().one()
    stored = json.dumps({k: str(v) for k, v in row.items()})
    assert "hunter2" not in stored and "sk_live_123" not in stored


def test_a_hanging_probe_hangs_until_its_hard_limit_even_without_a_sleep(api, admin_key, start_worker, recorder):
    # Given a worker, and a probe asked to hang with no sleep of its own, as the README's rehearsal reads
    worker = start_worker("high", concurrency=1)
    # When it is dispatched with a 1 s soft and 2 s hard limit
    task_id = dispatch(api, admin_key, tier="high", fail="hang", soft_time_limit_s=1, time_limit_s=2)
    # Then it does not answer pong: the hard limit kills it and it is dead-lettered as a timeout
    letter = one_letter(api, admin_key, task_id)
    assert (letter["reason"], letter["error_class"]) == ("timeout", "TimeLimitExceeded")
    assert worker.process.poll() is None
