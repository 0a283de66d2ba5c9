"""A worker that loses the database mid-task: the task is retried like any transient failure, never dead-lettered
at once (a database restart or failover used to turn every task meeting it into a `failed` dead letter)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from tests.support.api import auth
from tests.support.delivery import delivery_env, start_provider, start_smtp
from tests.support.processes import TcpProxy
from tests.support.services import DATABASE_URL
from tests.support.session import join
from tests.support.workers import RecorderProcess, spawn_worker


def test_a_task_meeting_a_database_outage_is_retried_and_done_once_the_database_is_back(
    api, client_key, admin_key, recorder: RecorderProcess
):
    inbox, controller = start_smtp()
    provider = start_provider()
    database = urlsplit(DATABASE_URL)
    with TcpProxy(database.port or 5432) as proxy:
        # Given a worker whose only way to the database is a connection that is about to drop
        through_proxy = DATABASE_URL.replace(f"{database.hostname}:{database.port or 5432}", f"127.0.0.1:{proxy.port}")
        worker = spawn_worker(
            f"dbout-{uuid.uuid4().hex[:6]}",
            "high,medium,low",
            1,
            {**delivery_env(inbox, provider), "DATABASE_URL": through_proxy},
        )
        try:
            worker.wait_ready()
            proxy.cut()
            # When a notification is sent while the worker cannot reach the database (the API still can)
            phone = "+4917" + str(uuid.uuid4().int)[:9]
            sent = api.post(
                "/api/v1/notifications",
                json={"channel": "sms", "recipient": phone, "body": "back soon"},
                headers=auth(client_key),
            )
            assert sent.status_code == 202, sent.text
            task_id, notification_id = sent.json()["task_id"], sent.json()["notification_id"]
            # Then its task is put back to retry, not dead-lettered
            join(
                lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "RETRY",
                timeout=30,
                what="the task to be retried",
            )
            # And once the database is back, the notification is sent, once, and nothing is dead-lettered
            proxy.restore()
            join(
                lambda: (
                    api.get(f"/api/v1/notifications/{notification_id}", headers=auth(client_key)).json()["status"]
                    == "sent"
                ),
                timeout=60,
                what="the notification to be sent",
            )
            assert len(provider.to("/sms", phone)) == 1
            letters = api.get("/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(admin_key))
            assert letters.json()["items"] == []
        finally:
            worker.stop()
            controller.stop()
            provider.shutdown()
            provider.server_close()
