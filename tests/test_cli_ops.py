"""The operator CLI's --json output parses and says what the API says (a real subprocess, a real worker)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from app.constants import Tier
from tests.support.api import auth, dispatch
from tests.support.services import queue_depth
from tests.support.session import ROOT, join


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin
    )


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def without(items: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    """Items minus fields that move between two reads (heartbeat age, uptime)."""
    return [{k: v for k, v in item.items() if k not in fields} for item in items]


TIERS = tuple(tier.value for tier in Tier)


# The three tests without a worker come first: the module's shared worker (below) would consume their tier.


def test_revoke_from_the_cli_is_what_the_api_then_reports(api, admin_key, empty_queues):
    # Given a task waiting on a tier no worker consumes in this test
    task_id = dispatch(api, admin_key, tier="low")
    # When the operator revokes it
    revoked = cli_json("revoke", task_id, "--reason", "cli test")
    # Then the CLI says so, and the API agrees
    assert revoked == {"task_id": task_id, "revoked": True, "terminate": False, "state": "REVOKED", "note": None}
    assert api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["revoked"] is True


def test_queues_purge_asks_first_and_does_nothing_when_refused(api, admin_key, empty_queues):
    # Given two waiting messages
    dispatch(api, admin_key, tier="low")
    dispatch(api, admin_key, tier="low")
    # When the operator answers no, Then nothing is dropped
    refused = cli("queues", "purge", "low", stdin="n\n")
    assert refused.returncode != 0 and "Drop 2 message(s)" in refused.stderr
    assert queue_depth("low")["ready"] == 2
    # When the operator confirms, Then both are dropped and stdout is the JSON alone (the prompt is on stderr)
    done = cli("queues", "purge", "low", "--json", stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"queue": "low", "purged": 2}
    assert queue_depth("low")["ready"] == 0
    # And an unknown queue is refused clearly
    unknown = cli("queues", "purge", "nope", "--yes")
    assert unknown.returncode == 1 and "is not one of" in unknown.stderr


def test_status_marks_each_tier_no_worker_consumes(api, admin_key, empty_queues):
    # Given no worker consuming any tier, as the management API counts them (its counts lag by its stats interval)
    join(
        lambda: all(q["consumers"] == 0 for q in cli_json("queues", "list") if q["name"] in TIERS),
        what="the management API to count no consumer on any tier",
    )
    # When the operator looks at the status screen
    done = cli("status")
    # Then every tier's row says no worker consumes it (the screen is a view: it still exits 0)
    assert done.returncode == 0, done.stderr
    rows = {
        line.split()[1]: line for line in done.stdout.splitlines() if line.split()[1:2] and line.split()[1] in TIERS
    }
    assert set(rows) == set(TIERS) and all("no worker" in row for row in rows.values()), done.stdout


def test_task_status_performance_and_queues_in_json_match_the_api(api, worker, admin_key):
    # Given a finished probe
    task_id = dispatch(api, admin_key, tier="high", echo="cli")
    join(
        lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["state"] == "SUCCESS",
        what="the probe to succeed",
    )
    join(
        lambda: api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()["started_at"],
        what="the run history to record it",
    )
    # When the CLI reads it, Then it prints exactly what the API answers
    assert cli_json("task", task_id) == api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(admin_key)).json()
    # And the performance figures agree (same window, nothing running in between)
    from_cli = cli_json("performance", "--window-s", "600")
    from_api = api.get("/api/v1/tasks/performance?window_s=600", headers=auth(admin_key)).json()
    assert from_cli == from_api
    assert any(t["name"] == "system.ping" and t["succeeded"] >= 1 for t in from_cli["tasks"])
    # And the status screen has the API's overview shape, with this worker in it
    status = cli_json("status")
    overview = api.get("/api/v1/tasks/overview", headers=auth(admin_key)).json()
    assert status.keys() == overview.keys()
    assert without(status["workers"], "heartbeat_age_s", "uptime_s") == without(
        overview["workers"], "heartbeat_age_s", "uptime_s"
    )
    assert worker.hostname in {w["hostname"] for w in status["workers"]}
    assert [q["name"] for q in status["queues"]] == [q["name"] for q in overview["queues"]]
    assert [q["name"] for q in cli_json("queues", "list")] == [q["name"] for q in overview["queues"]]

    # And once the management API counts this worker's consumers (its stats lag by about 5 s), the plain screen
    # says each tier is consumed, with no tier marked as missing its worker
    def consumed() -> bool:
        return all(q["consumers"] >= 1 for q in cli_json("queues", "list") if q["name"] in TIERS)

    join(consumed, what="the management API to count a consumer on every tier")
    screen = cli("status").stdout
    assert "no worker" not in screen and screen.count("consuming") == len(TIERS), screen
    # And scheduled lists beat's periodic entries as the API does
    assert (
        cli_json("scheduled")["periodic"]
        == api.get("/api/v1/tasks/scheduled", headers=auth(admin_key)).json()["periodic"]
    )
