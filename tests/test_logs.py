"""Structured logs: JSON lines from the workers, with the task's id, name and attempt and the request id that
dispatched it; secrets masked."""

from __future__ import annotations

import json
import logging
from typing import Any

from app.constants import Tier
from app.context import request_id
from app.engine import publish
from app.engine.celery_app import celery_app
from app.logging import TEXT_FORMAT, JsonFormatter, RedactingFormatter
from tests.support.api import auth
from tests.support.session import join


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log's JSON records (the Celery banner, printed before logging starts, is plain text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_worker_logs_are_json_lines_with_the_task_and_the_request_that_dispatched_it(api, start_worker, admin_key):
    # Given a worker
    worker = start_worker("medium")
    # When an HTTP request with a request id dispatches a failing probe
    response = api.post(
        "/api/v1/tasks/ping",
        json={"tier": "medium", "fail": "permanent"},
        headers={**auth(admin_key), "X-Request-ID": "req-ops-logs-1"},
    )
    assert response.status_code == 202
    failing = response.json()["task_id"]
    # And code holding a request id dispatches a probe that logs each step
    token = request_id.set("req-ops-logs-2")
    try:
        stepping = publish.dispatch(
            "system.ping", kwargs={"steps": 2, "sleep_s": 0.1}, triggered_by=admin_key[0], tier=None
        ).task_id
    finally:
        request_id.reset(token)

    def logged() -> list[dict[str, Any]] | None:
        records = json_lines(worker.log())
        mine = {r.get("task_id") for r in records}
        return records if {failing, stepping} <= mine and any("step 2/2" in r["message"] for r in records) else None

    records = join(logged, what="the worker to log both tasks")
    # Then every line after the banner is a JSON object with the standard fields
    body = worker.log().split("[tasks]", 1)[-1].splitlines()
    for line in body:
        if line.strip() and not line.startswith("  . "):
            record = json.loads(line)
            assert {"ts", "level", "logger", "message"} <= record.keys(), line
    # And the task's own lines carry its id, name, attempt and the request id that dispatched it
    step = next(r for r in records if "step 1/2" in r["message"])
    assert step["task_id"] == stepping and step["task_name"] == "system.ping" and step["attempt"] == 1
    assert step["request_id"] == "req-ops-logs-2"
    failure = [r for r in records if r.get("task_id") == failing]
    assert failure and all(r["request_id"] == "req-ops-logs-1" for r in failure)
    assert any(r["level"] == "ERROR" for r in failure)


def test_secrets_are_masked_in_every_log_line():
    # Given a record that carries a broker URL with a password, a bearer token and a password pair
    record = logging.LogRecord(
        "courier.test",
        logging.WARNING,
        __file__,
        1,
        "connect amqp://courier:s3cr3t-pw@rabbit:5672/courier with Authorization: Bearer abc.def-123 password=hunter2",
        None,
        None,
    )
    # When it is formatted
    line = JsonFormatter().format(record)
    # Then it is one JSON object and none of the secrets survive
    message = json.loads(line)["message"]
    for secret in ("s3cr3t-pw", "abc.def-123", "hunter2"):
        assert secret not in line
    assert "amqp://courier:***@rabbit:5672/courier" in message


def test_the_request_id_travels_in_the_message_itself(api, start_worker, admin_key):
    """The header, not the publisher's Redis meta, carries it: a task whose meta is gone still logs it."""
    from tests.support.services import redis_client

    # Given a request id in force and the probe's meta removed before any worker sees the task
    token = request_id.set("req-in-header")
    try:
        task_id = publish.dispatch("system.ping", kwargs={"steps": 1}, triggered_by=admin_key[0]).task_id
    finally:
        request_id.reset(token)
    redis_client().delete(f"courier:task:{task_id}")
    # When a worker runs it
    worker = start_worker("medium")
    records = join(
        lambda: [r for r in json_lines(worker.log()) if r.get("task_id") == task_id and "step 1/1" in r["message"]],
        what="the task's step line",
    )
    # Then its line names the request that dispatched it
    assert records[0]["request_id"] == "req-in-header"


def test_messages_carry_the_request_id_header_and_a_timestamp():
    from app.engine.speed.amqp_async import build_message

    message = build_message(
        celery_app.amqp,
        name="system.ping",
        task_id="t-1",
        kwargs={},
        priority=3,
        options={},
        headers={"courier_request_id": "r-1"},
    )
    assert message.headers["courier_request_id"] == "r-1"
    assert message.headers["task"] == "system.ping"  # Celery's own headers kept
    assert message.timestamp is not None


def test_per_task_info_lines_are_off_by_default_and_retries_still_show(api, start_worker, admin_key):
    quiet = start_worker("low", concurrency=1)
    chatty = start_worker("high", concurrency=1, env={"WORKER_LOG_EACH_TASK": "true"})
    ok_low = publish.dispatch("system.ping", kwargs={}, triggered_by=admin_key[0], tier=Tier.low).task_id
    retried = publish.dispatch("system.ping", kwargs={"fail": "transient"}, triggered_by=admin_key[0], tier=Tier.low)
    ok_high = publish.dispatch("system.ping", kwargs={}, triggered_by=admin_key[0], tier=Tier.high).task_id
    join(lambda: f"{ok_high}] succeeded in" in chatty.log(), what="the chatty worker's success line")
    join(lambda: f"{retried.task_id}] retry:" in quiet.log(), what="the quiet worker's retry line")
    from app.engine.celery_app import celery_app

    join(lambda: celery_app.AsyncResult(ok_low).state == "SUCCESS", what="the quiet worker's task to succeed")
    assert f"{ok_high}] received" in chatty.log()
    assert f"{ok_low}] received" not in quiet.log() and f"{ok_low}] succeeded in" not in quiet.log()


def test_a_text_log_line_shows_a_line_break_or_an_escape_from_outside_as_text_and_keeps_its_traceback_below():
    import sys

    # Given a task name from outside that would forge a second log line and clear the terminal tailing the log
    name = "evil\n2026-12-03 08:00:00,000 ERROR app.audit [1] audit chain verified\x1b[2J"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "task %s failed", (name,), sys.exc_info())
    # When it is written in the text format (LOG_FORMAT=text)
    lines = RedactingFormatter(TEXT_FORMAT).format(record).splitlines()
    # Then the message is one line with the break and the ESC shown as escapes, and the traceback follows it
    assert lines[0].endswith(
        r"task evil\n2026-12-03 08:00:00,000 ERROR app.audit [1] audit chain verified\x1b[2J failed"
    )
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: boom"
    assert not any("\x1b" in line for line in lines)
