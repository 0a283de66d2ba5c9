"""Replaying, discarding and keeping dead letters: the admin's side of the dead-letter store."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from app.config import get_settings
from app.engine import topology
from app.rabbitmq import ManagementClient
from tests.support.api import auth, dispatch
from tests.support.services import queue_depth
from tests.support.session import ROOT, join

pytestmark = pytest.mark.usefixtures("empty_queues")


def _letter_of(api, key, task_id, status="pending"):
    def find():
        items = api.get(
            "/api/v1/tasks/dead-letters", params={"task_id": task_id, "status": status}, headers=auth(key)
        ).json()["items"]
        return items[0] if items else None

    return join(find, timeout=60, what=f"a {status} dead letter for {task_id}")


def _state(api, key, task_id):
    return api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(key)).json()["state"]


def test_replaying_a_fixed_task_reaches_success_under_the_same_task_id(api, admin_key, start_worker, recorder):
    # Given a task dead-lettered because of its input
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent", echo="second chance")
    letter = _letter_of(api, admin_key, task_id)
    # When an admin fixes the input and replays it
    response = api.post(
        f"/api/v1/tasks/dead-letters/{letter['id']}/replay",
        json={"why": "fixed the input", "kwargs": {"echo": "second chance", "fail": "none"}},
        headers=auth(admin_key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "replayed"
    # Then the same task id (the client's status URL) reaches SUCCESS with the new input
    join(lambda: _state(api, admin_key, task_id) == "SUCCESS", what="SUCCESS after replay")
    task = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()
    assert task["result"]["echo"] == "second chance"
    # And the replay is in the audit trail with who and why
    from app.audit import service as audit_service
    from app.db import session_scope

    with session_scope() as session:
        events = audit_service.list_for_target(session=session, target=f"task:{task_id}")
        assert [(e.action, e.actor, e.reason) for e in events] == [
            ("dead_letter.replay", admin_key[0], "fixed the input")
        ]
    # And a replayed letter cannot be replayed twice
    again = api.post(f"/api/v1/tasks/dead-letters/{letter['id']}/replay", json={}, headers=auth(admin_key))
    assert again.status_code == 409


def test_a_replay_that_fails_again_becomes_a_new_dead_letter_with_its_replay_counted(
    api, admin_key, start_worker, recorder
):
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent")
    first = _letter_of(api, admin_key, task_id)
    api.post(f"/api/v1/tasks/dead-letters/{first['id']}/replay", json={}, headers=auth(admin_key))
    second = _letter_of(api, admin_key, task_id)
    assert second["id"] != first["id"]
    assert second["replays"] == 1 and second["retries"] == 0
    full = api.get(f"/api/v1/tasks/dead-letters/{second['id']}", headers=auth(admin_key)).json()
    assert len([d for d in full["headers"]["x-death"] if d["reason"] == "rejected"]) == 1


def test_bulk_replay_counts_on_a_dry_run_then_replays_every_match_at_a_bounded_rate(
    api, admin_key, start_worker, recorder
):
    # Given three dead letters of one kind and one of another
    worker = start_worker("medium", concurrency=1)
    echo = f"bulk-{uuid.uuid4().hex[:6]}"
    ids = [dispatch(api, admin_key, fail="permanent", echo=echo) for _ in range(3)]
    for task_id in ids:
        _letter_of(api, admin_key, task_id)
    since = min(
        api.get("/api/v1/tasks/dead-letters", params={"task_id": t}, headers=auth(admin_key)).json()["items"][0][
            "recorded_at"
        ]
        for t in ids
    )
    criteria = {"task_name": "system.ping", "reason": "failed", "since": since}
    # When an admin asks for a dry run
    dry = api.post("/api/v1/tasks/dead-letters/replay", json={**criteria, "dry_run": True}, headers=auth(admin_key))
    # Then it only counts
    assert dry.status_code == 202 and dry.json() == {"matched": 3, "dry_run": True, "task_id": None, "status_url": None}
    assert all(_letter_of(api, admin_key, t)["status"] == "pending" for t in ids)
    # When the replay runs (on a low-tier worker, paced at 5 per second)
    worker.stop()
    start_worker("low,medium", concurrency=1)
    run = api.post(
        "/api/v1/tasks/dead-letters/replay", json={**criteria, "rate_per_s": 5, "why": "drill"}, headers=auth(admin_key)
    )
    assert run.status_code == 202, run.text
    body = run.json()
    # Then the bulk task reports its progress and finishes with every letter replayed
    join(lambda: _state(api, admin_key, body["task_id"]) == "SUCCESS", what="bulk replay to finish")
    result = api.get(body["status_url"], headers=auth(admin_key)).json()["result"]
    assert result == {"total": 3, "replayed": 3, "skipped": 0}
    for task_id in ids:
        _letter_of(api, admin_key, task_id, status="replayed")


def test_a_bulk_replay_at_a_rate_out_of_range_is_a_422(api, admin_key):
    # Given rates outside (0, 1000] letters per second, and NaN (which Python's json reads)
    criteria = json.dumps({"task_name": f"none.{uuid.uuid4().hex[:8]}", "why": "drill"})
    for rate, names in (("-5", "rate_per_s"), ("0", "rate_per_s"), ("1e9", "rate_per_s"), ("NaN", "non_finite")):
        # When an admin asks for a bulk replay at that rate
        answer = api.post(
            "/api/v1/tasks/dead-letters/replay",
            content=criteria[:-1] + f', "rate_per_s": {rate}}}',
            headers={**auth(admin_key), "Content-Type": "application/json"},
        )
        # Then it is refused, naming the field (or the number no JSON column holds)
        assert answer.status_code == 422 and names in answer.text, (rate, answer.text)


def test_the_sql_record_survives_a_purge_of_the_rabbitmq_dead_letter_queue(api, admin_key, start_worker, recorder):
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent")
    letter = _letter_of(api, admin_key, task_id)
    join(lambda: queue_depth("dead_letter")["ready"] >= 1)
    settings = get_settings()
    with ManagementClient.for_broker_user(settings) as client:
        client.purge(settings.broker_vhost, "dead_letter")
    assert queue_depth("dead_letter")["ready"] == 0
    assert api.get(f"/api/v1/tasks/dead-letters/{letter['id']}", headers=auth(admin_key)).status_code == 200


def test_past_the_rabbitmq_cap_the_oldest_message_leaves_the_queue_but_every_letter_stays_in_sql(
    api, admin_key, start_worker, recorder
):
    # Given the dead_letter queue capped at 2 messages
    settings = get_settings()
    topology.declare(settings.model_copy(update={"dead_letter_max_length": 2}))
    try:
        start_worker("low", concurrency=2)
        # When three tasks are dead-lettered
        ids = [dispatch(api, admin_key, tier="low", fail="permanent") for _ in range(3)]
        letters = [_letter_of(api, admin_key, t) for t in ids]
        # Then RabbitMQ keeps the newest 2 (drop-head), and SQL keeps all 3
        join(lambda: queue_depth("dead_letter")["ready"] == 2, what="the capped queue")
        assert len({letter["id"] for letter in letters}) == 3
    finally:
        topology.declare(settings)


def test_a_recorder_that_was_down_catches_up_on_every_dead_letter(api, admin_key, start_worker, recorder):
    # Given the recorder is killed
    recorder.kill()
    try:
        # When a task is dead-lettered meanwhile
        start_worker("low", concurrency=1)
        task_id = dispatch(api, admin_key, tier="low", fail="permanent")
        join(lambda: queue_depth("dead_letter.archive")["ready"] >= 1, what="the archive to hold it")
        assert (
            api.get("/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(admin_key)).json()["total"]
            == 0
        )
    finally:
        # And the recorder comes back
        recorder.start()
    # Then the letter is recorded, once
    _letter_of(api, admin_key, task_id)
    assert (
        api.get("/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(admin_key)).json()["total"] == 1
    )


def test_discard_and_purge_need_a_reason_and_are_audited(api, admin_key, start_worker, recorder):
    start_worker("low", concurrency=1)
    ids = [dispatch(api, admin_key, tier="low", fail="permanent", echo="discard me") for _ in range(2)]
    letters = [_letter_of(api, admin_key, t) for t in ids]
    # A discard without a reason is refused
    assert api.delete(f"/api/v1/tasks/dead-letters/{letters[0]['id']}", headers=auth(admin_key)).status_code == 422
    gone = api.delete(
        f"/api/v1/tasks/dead-letters/{letters[0]['id']}", params={"why": "known bad input"}, headers=auth(admin_key)
    )
    assert gone.status_code == 200 and gone.json()["status"] == "discarded"
    assert gone.json()["resolution_note"] == "known bad input"
    # A purge by filter discards the rest that match
    purged = api.post(
        "/api/v1/tasks/dead-letters/purge",
        json={"task_name": "system.ping", "since": letters[1]["recorded_at"], "why": "drill"},
        headers=auth(admin_key),
    )
    assert purged.status_code == 200 and purged.json()["discarded"] >= 1
    _letter_of(api, admin_key, ids[1], status="discarded")
    # And only admins may do any of it
    from tests.support.api import make_key

    client = make_key("client")
    assert api.get("/api/v1/tasks/dead-letters", headers=auth(client)).status_code == 403


def test_the_dead_letters_cli_lists_shows_replays_and_purges(api, admin_key, start_worker, recorder):
    start_worker("low", concurrency=1)
    task_id = dispatch(api, admin_key, tier="low", fail="permanent")
    letter = _letter_of(api, admin_key, task_id)

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "dead-letters", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    import json

    assert any(item["task_id"] == task_id for item in json.loads(listed.stdout)["items"])
    table = cli("list", "--task", "system.ping")
    assert "Dead letters" in table.stdout and "failed" in table.stdout
    shown = cli("show", str(letter["id"]))
    assert shown.returncode == 0 and json.loads(shown.stdout)["task_id"] == task_id
    replayed = cli("replay", str(letter["id"]), "--why", "cli drill")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {letter['id']}" in replayed.stdout
    assert cli("show", "999999").returncode == 1


def test_metrics_expose_dead_letters_by_task_and_reason(api, admin_key, start_worker, recorder):
    start_worker("low", concurrency=1)
    _letter_of(api, admin_key, dispatch(api, admin_key, tier="low", fail="permanent"))
    text = api.get("/metrics").text
    assert 'courier_dead_letters_total{reason="failed",task="system.ping"}' in text
    assert 'courier_dead_letters_pending{reason="failed",task="system.ping"}' in text
    assert "courier_dead_letter_oldest_pending_age_seconds" in text
    assert 'courier_queue_messages{queue="dead_letter",state="ready"}' in text
