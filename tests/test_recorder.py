"""The recorder (`python -m app.recorder`) as a real process: a service it needs going down is logged as changes
of state (down, still down every OUTAGE_LOG_INTERVAL_S, back), not as an ERROR with a traceback every retry."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support.processes import OwnRedis, log_records
from tests.support.session import ROOT, join

#: How long the Redis outage lasts: several of the recorder's 2 s retries.
OUTAGE_S = 7.0


def test_a_redis_outage_is_logged_once_down_and_once_back_without_tracebacks(tmp_path):
    # Given a recorder reading the journal of a Redis the test owns
    with OwnRedis(appendonly=True) as own:
        log_path = tmp_path / "recorder.log"
        env = {**os.environ, "CELERY_RESULT_BACKEND": own.url, "REDIS_URL": own.url, "LOG_FORMAT": "json"}
        with open(log_path, "wb") as log:
            recorder = subprocess.Popen(
                [sys.executable, "-m", "app.recorder"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            join(lambda: "is reading" in log_path.read_text(), what="the recorder to start reading")
            before = len(log_records(log_path.read_text()))
            # When Redis dies for several of its retries, then comes back
            own.kill()
            time.sleep(OUTAGE_S)  # (the outage itself)
            own.start()
            # Then it says Redis is back, and goes on
            join(lambda: "Redis is back" in log_path.read_text(), what="the recorder to say Redis is back")
            assert recorder.poll() is None
        finally:
            recorder.terminate()
            recorder.wait(20)
    during = log_records(log_path.read_text())[before:]
    # And the outage took one line going down and one coming back: no ERROR, no traceback per retry
    assert [r["message"] for r in during if r["message"].startswith("Redis is down")], during
    assert len([r for r in during if r["level"] in ("WARNING", "ERROR")]) == 1, during
    assert not [r for r in during if "exc_info" in r or r["level"] == "ERROR"], during
