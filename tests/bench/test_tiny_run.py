"""A tiny run of the benchmark, so it never rots. It asserts the report's shape and that nothing failed,
never a time: speed is measured with `python -m bench`, not in tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.session import ROOT


@pytest.mark.timeout(300)
def test_a_tiny_benchmark_run_measures_every_peer_and_every_courier_figure(tmp_path):
    out = tmp_path / "bench.json"
    # When the benchmark runs with a few hundred messages and one repetition
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--messages",
            "200",
            "--requests",
            "100",
            "--latency-seconds",
            "1",
            "--reps",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    # Then every figure is there, positive, and the table was printed
    expected = {
        "ceiling.publish_1",
        "ceiling.publish_8",
        "ceiling.consume_prefetch_1",
        "ceiling.consume_prefetch_50",
        "celery.enqueue",
        "celery.e2e",
        "dramatiq.e2e_confirms_off",
        "dramatiq.e2e_confirms_on",
        "courier.drain_high",
        "courier.drain_medium",
        "courier.drain_low",
        "courier.e2e",
        "courier.drain_medium_without_history",
        "courier.latency_100rps_p50_ms",
        "courier.latency_100rps_p99_ms",
        "courier.latency_100rps_errors",
        "courier.history_catch_up_s",
        *(
            f"courier.e2e_cpu_per_task_{part}_ms"
            for part in ("worker_main", "worker_children", "recorder", "rabbitmq", "redis", "postgresql", "publisher")
        ),
        *(f"celery.e2e_cpu_per_task_{part}_ms" for part in ("worker_main", "worker_children", "rabbitmq", "publisher")),
    }
    assert expected <= set(report["figures"])
    never_zero = {n for n in expected if not n.endswith(("errors", "_s", "_ms"))}
    assert all(report["figures"][name]["median"] > 0 for name in never_zero)
    assert report["figures"]["courier.e2e_cpu_per_task_worker_children_ms"]["median"] > 0
    assert report["figures"]["courier.latency_100rps_errors"]["median"] == 0
    assert set(report["api"]) == {"c1", "c16", "c64"}
    assert all(level["errors"]["median"] == 0 for level in report["api"].values())
    assert report["machine"]["cores"] and report["versions"]["celery"]
    assert set(report["goals_met"]) == {
        "e2e_vs_stock_celery",
        "e2e_vs_dramatiq_confirms",
        "api_c64",
        "latency",
        "history_cost",
    }
    assert set(report["figures_within_goal"]) == set(report["goals"])
    assert "goals (ratios from this run)" in done.stdout
    assert "CPU per task end to end" in done.stdout and "stock celery" in done.stdout
