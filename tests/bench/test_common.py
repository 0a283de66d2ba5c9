"""The benchmark's process helper: a restarted process is judged by its own output only."""

from __future__ import annotations

import sys

import pytest

from bench.common import Process


def test_a_restarted_process_does_not_count_its_predecessors_ready_line(tmp_path):
    first = Process("worker", [sys.executable, "-c", "print('ready.', flush=True)"], {}, tmp_path)
    first.popen.wait(30)
    # When the same process is started again (its log is appended to)
    script = "import time; time.sleep(2); print('ready.', flush=True); time.sleep(60)"
    second = Process("worker", [sys.executable, "-c", script], {}, tmp_path)
    try:
        # Then the first one's "ready." is not the second's
        assert "ready." not in second.log()
        with pytest.raises(TimeoutError):
            second.wait_for_log("ready.", timeout=0.5)
        second.wait_for_log("ready.", timeout=30)
    finally:
        second.stop()
