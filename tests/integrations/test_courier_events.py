"""Courier's own events reach subscribed webhooks: `task.dead_lettered` from the dead-letter recording,
`report.ready` from a finished report."""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook

from tests.support.api import auth, dispatch, register
from tests.support.session import join


def test_a_dead_lettered_task_is_announced_to_subscribers(api, admin_key, worker, recorder, receiver):
    # Given an endpoint subscribed to dead letters
    server = receiver()
    endpoint = register(api, admin_key, server.url, ["task.dead_lettered"])
    # When a task fails permanently
    task_id = dispatch(api, admin_key, fail="permanent")
    # Then the endpoint is told, with the task and the reason, in a signed delivery
    join(lambda: server.received, timeout=60, what="the task.dead_lettered delivery")
    payload = Webhook(endpoint["secret"]).verify(server.received[0].body, server.received[0].headers)
    assert payload["type"] == "task.dead_lettered"
    assert payload["data"]["task_id"] == task_id
    assert payload["data"]["task_name"] == "system.ping" and payload["data"]["reason"] == "failed"


def test_a_finished_report_is_announced_to_subscribers(api, admin_key, worker, receiver):
    server = receiver()
    endpoint = register(api, admin_key, server.url, ["report.*"])
    response = api.post("/api/v1/audit/reports", json={"kind": "daily"}, headers=auth(admin_key))
    assert response.status_code == 202
    join(lambda: server.received, timeout=60, what="the report.ready delivery")
    payload = Webhook(endpoint["secret"]).verify(server.received[0].body, server.received[0].headers)
    assert payload["type"] == "report.ready"
    assert payload["data"] == {"report_id": response.json()["report_id"], "kind": "daily", "files": ["csv", "json"]}
