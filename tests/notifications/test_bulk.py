"""A bulk send to 2,000 recipients: rising progress on the task's status URL, every message delivered once."""

from __future__ import annotations

import uuid

from tests.support.api import auth
from tests.support.session import join


def test_a_bulk_send_to_two_thousand_recipients_reports_rising_progress_and_delivers_each_once(
    api, client_key, delivered
):
    # Given 2,000 distinct addresses
    run = uuid.uuid4().hex[:6]
    recipients = [f"r{i:04d}-{run}@example.com" for i in range(2000)]
    # When one bulk email is sent to them
    response = api.post(
        "/api/v1/notifications/bulk",
        json={"channel": "email", "recipients": recipients, "subject": "News", "body": "Hello all"},
        headers=auth(client_key),
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["total"] == 2000
    # Then the status URL shows progress that rises to the total
    seen: list[int] = []

    def finished():
        task = api.get(answer["status_url"], headers=auth(client_key)).json()
        if task.get("progress"):
            assert task["progress"]["total"] == 2000
            seen.append(task["progress"]["current"])
        return task["state"] == "SUCCESS" and task

    task = join(finished, timeout=110, interval=0.05, what="the bulk send to finish")
    assert task["result"] == {"total": 2000, "sent": 2000, "already": 0, "failed": 0, "pending": 0}
    distinct = sorted(set(seen))
    assert len(distinct) >= 3, seen
    assert seen == sorted(seen), "progress went backwards"
    # And every recipient received exactly one message
    counts = delivered.inbox.counts()
    assert {address: counts[address] for address in recipients} == dict.fromkeys(recipients, 1)


def test_a_bulk_send_refuses_duplicate_or_invalid_recipients(api, client_key):
    for recipients in (["a@example.com", "a@example.com"], ["not-an-address"], []):
        response = api.post(
            "/api/v1/notifications/bulk",
            json={"channel": "email", "recipients": recipients, "body": "x"},
            headers=auth(client_key),
        )
        assert response.status_code == 422, response.text


def test_a_bulk_sends_progress_streams_live_over_server_sent_events(api, client_key, delivered):
    from tests.support.api import read_events

    # Given a bulk email to 600 recipients (six chunks of BULK_CHUNK_SIZE=100)
    run = uuid.uuid4().hex[:6]
    recipients = [f"s{i:03d}-{run}@example.com" for i in range(600)]
    response = api.post(
        "/api/v1/notifications/bulk",
        json={"channel": "email", "recipients": recipients, "subject": "Live", "body": "Watch this"},
        headers=auth(client_key),
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    # When the client follows the task's events
    events = read_events(api, client_key, task_id)
    # Then current/total climbs, never backwards, and the stream ends with SUCCESS
    progress = [e["progress"]["current"] for name, e in events if name == "state" and e.get("progress")]
    assert len(set(progress)) >= 2, events
    assert progress == sorted(progress)
    assert {e["progress"]["total"] for name, e in events if name == "state" and e.get("progress")} == {600}
    assert events[-1] == ("end", {"task_id": task_id, "state": "SUCCESS"})
