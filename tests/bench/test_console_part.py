"""A tiny run of the benchmark's console part, so it never rots: it seeds its own database, signs in through the
console's form and times every page. It asserts the report (every page answered, figures ordered), never a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.session import ROOT


@pytest.mark.timeout(300)
def test_a_tiny_console_benchmark_times_every_page(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--parts",
            "console",
            "--console-runs",
            "600",
            "--console-letters",
            "60",
            "--console-samples",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())["console"]
    assert (report["runs"], report["dead_letters"], report["goal_p95_ms"]) == (600, 60, 200.0)
    # Every page was timed (each request answered 200, or the run would have failed), the lists and details all
    expected = {"overview", "dead letters (pending, groups)", "dead letter", "runs", "run", "queues & workers"}
    assert expected <= set(report["pages"])
    assert len(report["pages"]) == 17
    for name, figure in report["pages"].items():
        assert 0 < figure["p50_ms"] <= figure["p95_ms"] <= figure["max_ms"], name
    assert "console pages (600 runs, 60 dead letters" in done.stdout
