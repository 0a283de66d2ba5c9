"""Outage noise: an outage is logged as changes of state (down, still down every N s, back), never one line per
refused request; no future is left unretrieved; beat needs no result store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.api import ApiProcess, auth
from tests.support.processes import OwnRedis, TcpProxy, log_records
from tests.support.services import AMQP_HOST, MGMT_AUTH, VHOST, mgmt
from tests.support.session import ROOT, VAR_DIR, join

#: Words of a line about the broker being unreachable, in any of its forms (Courier's, aiormq's, asyncio's).
OUTAGE_WORDS = ("broker", "publish", "connection", "future", "confirm")
#: How long the Redis outage of the beat test lasts: past the result store's retry policy (5 s).
OUTAGE_S = 7.0


def test_a_state_change_log_says_down_still_down_and_back_once_each(caplog):
    from app.logging import StateChangeLog

    # Given an outage log with a 10 s interval on a clock the test moves
    now = [100.0]
    outage = StateChangeLog(
        logging.getLogger("courier.test.outage"),
        "The message broker",
        consequence="dispatches answer 503",
        interval_s=10,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.INFO, logger="courier.test.outage")
    # When 1,000 calls fail over 25 s, then one succeeds, then more succeed
    for i in range(1000):
        now[0] = 100.0 + i * 0.025
        outage.failed(f"call {i} refused")
    outage.succeeded()
    outage.succeeded()
    # Then there is one "down" line, two "still down" lines (at 10 s and 20 s) and one "back" line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("The message broker is down: call 0 refused; dispatches answer 503")
    assert "still down after 10 s" in lines[1] and "still down after 20 s" in lines[2]
    assert lines[3].startswith("The message broker is back after 25.0 s down (1000 failure(s) meanwhile)")
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "WARNING", "INFO"]


def test_publishes_in_flight_when_the_broker_connection_drops_leave_no_future_unretrieved():
    import asyncio
    import gc

    from app.config import Settings
    from app.engine.celery_app import celery_app
    from app.engine.speed.amqp_async import AsyncPublisher, PublishFailed

    reported: list[str] = []

    async def scenario(proxy: TcpProxy) -> list[str]:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(str(context)))
        url = f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@127.0.0.1:{proxy.port}/{VHOST}"
        publisher = AsyncPublisher(Settings(celery_broker_url=url, publish_timeout_s=2), celery_app.amqp)
        await publisher.connect()

        async def publish(i: int) -> str:
            try:
                # An unroutable key: the broker returns it (nothing is left in a queue), or the drop fails it
                await publisher.publish(
                    name="system.ping", task_id=f"drop-{i}", kwargs={}, routing_key="nowhere", priority=0, options={}
                )
            except PublishFailed:
                return "failed"
            return "confirmed"  # pragma: no cover - mandatory and unroutable

        # Given 500 publishes in flight
        flying = [asyncio.ensure_future(publish(i)) for i in range(500)]
        await asyncio.sleep(0.01)
        # When the connection drops under them, and the broker comes back for the next publish
        proxy.cut()
        outcomes = await asyncio.gather(*flying)
        proxy.restore()
        outcomes.append(await publish(500))
        await publisher.close()
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
        return outcomes

    with TcpProxy(5672, AMQP_HOST) as proxy:
        outcomes = asyncio.run(scenario(proxy))
    gc.collect()
    # Then every publish failed cleanly, and asyncio reported no future whose exception nobody read
    assert set(outcomes) == {"failed"}
    assert not reported, reported[:3]


def test_the_publisher_reads_aiormq_channel_attributes_it_relies_on():
    """`_abandon` reads two attributes of aiormq's Channel; an upgrade that renames them fails here by name."""
    import asyncio

    import aiormq

    async def shape() -> tuple[object, object]:
        connection = await aiormq.connect(f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{VHOST}")
        channel = await connection.channel(publisher_confirms=True)
        found = (getattr(channel, "confirmations", None), getattr(channel, "message_id_delivery_tag", None))
        await connection.close()
        return found

    confirmations, tags = asyncio.run(shape())
    assert isinstance(confirmations, dict), "aiormq Channel.confirmations (delivery tag -> future) is gone"
    assert isinstance(tags, dict), "aiormq Channel.message_id_delivery_tag (message id -> tag) is gone"


def test_a_broker_outage_logs_its_start_and_end_once_not_one_line_per_refused_request(admin_key):
    # Given an API process whose publisher reaches RabbitMQ through a forwarder the test can cut
    with TcpProxy(5672, AMQP_HOST) as proxy:
        broker_url = f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@127.0.0.1:{proxy.port}/{VHOST}"
        env = {"CELERY_BROKER_URL": broker_url, "PUBLISH_TIMEOUT_S": "2"}
        api = ApiProcess(env, log_path=VAR_DIR / "api-outage.log")
        try:
            api.wait_listening()
            url, headers = f"{api.base}/api/v1/tasks/ping", auth(admin_key)
            with httpx.Client(timeout=15) as client:

                def dispatch(_: int = 0) -> httpx.Response:
                    return client.post(url, json={"tier": "low"}, headers=headers)

                assert dispatch().status_code == 202
                before = len(api.log().splitlines())
                # When the broker vanishes (its connections dropped, new ones refused) and 200 dispatches arrive
                proxy.cut()
                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(dispatch, range(200)))
                # Then every one is refused with 503 and Retry-After
                assert {a.status_code for a in answers} == {503}
                assert all(a.headers.get("retry-after", "").isdigit() for a in answers)
                # When the broker is back, Then dispatches are accepted again
                proxy.restore()
                join(lambda: dispatch().status_code == 202, timeout=20, what="a dispatch to be accepted again")
        finally:
            api.stop()
    # Then the outage took a handful of lines: one "down", one "back", no line per request
    log = api.log()
    during = log_records("\n".join(log.splitlines()[before:]))
    noisy = [r for r in during if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert len(noisy) <= 3, "\n".join(json.dumps(r) for r in noisy[:10])
    assert any("is down" in r["message"] for r in noisy)
    assert any("is back" in r["message"] for r in during)
    outage_lines = [r for r in during if any(w in r["message"].lower() for w in OUTAGE_WORDS)]
    assert len(outage_lines) <= 4, "\n".join(json.dumps(r) for r in outage_lines[:10])
    # And no future was left with an exception nobody retrieved
    assert "Future exception was never retrieved" not in log
    assert "Task exception was never retrieved" not in log


def test_beat_survives_a_redis_outage_without_a_retry_limit_and_keeps_publishing(tmp_path):
    # Given beat, run as the start script runs it, with its result store on a Redis the test owns
    with OwnRedis() as own:
        log_path = tmp_path / "beat.log"
        env = {
            **os.environ,
            "CELERY_RESULT_BACKEND": own.url,
            "REDIS_URL": own.url,
            "NOTIFICATION_SCHEDULER_INTERVAL_S": "0.5",
        }
        cmd = [sys.executable, "-m", "celery", "-A", "app.tasks", "beat", "--schedule", str(tmp_path / "schedule")]
        cmd += ["--pidfile=", "--loglevel", "INFO"]
        with open(log_path, "wb") as log:
            beat = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sent = "Sending due task process-scheduled-notifications"
        try:
            join(lambda: log_path.read_text().count(sent) >= 2, what="beat to send the scheduler task")
            # When Redis dies for longer than the result store's retry policy (5 s), then comes back
            own.kill()
            time.sleep(OUTAGE_S)  # (the outage itself: longer than the result store's 5 s retry policy)
            own.start()
            back_at = log_path.read_text().count(sent)
            # Then beat keeps publishing after it
            join(lambda: log_path.read_text().count(sent) >= back_at + 3, what="beat to publish after the outage")
            assert beat.poll() is None
        finally:
            beat.terminate()
            beat.wait(20)
            mgmt("DELETE", f"/queues/{VHOST}/high/contents")
    # And it never declared itself in need of a restart
    text = log_path.read_text()
    assert "Retry limit exceeded" not in text
    assert not [r for r in log_records(text) if r["level"] == "CRITICAL"]
