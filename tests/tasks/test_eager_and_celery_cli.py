"""Development eager mode, and Celery's own CLI used as a real client of Courier's app."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support.session import ROOT


def test_eager_mode_runs_a_dispatched_task_inline_and_its_result_is_readable(admin_key):
    # Given an API process in development eager mode
    script = textwrap.dedent(f"""
        from fastapi.testclient import TestClient
        from app.main import app
        headers = {{"Authorization": "Bearer {admin_key[1]}"}}
        with TestClient(app) as client:
            answer = client.post("/api/v1/tasks/ping", json={{"echo": "inline"}}, headers=headers)
            assert answer.status_code == 202, answer.text
            task = client.get(answer.json()["status_url"], headers=headers).json()
            print(task["state"], task["result"]["echo"])
    """)
    env = {**os.environ, "CELERY_TASK_ALWAYS_EAGER": "true"}
    # When a task is dispatched, no worker running
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    # Then it already ran, inline
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SUCCESS", "inline"]


def test_celery_inspect_ping_and_status_answer_from_a_courier_worker(worker):
    for args in (["inspect", "ping", "-d", worker.hostname], ["status"]):
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "app.tasks", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert worker.hostname in done.stdout
