"""A tiny run of the benchmark, so it never rots. It asserts what every peer did (every task's result stored,
no error) and the report's shape, never a time: speed is measured with `python -m bench`, not in tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.session import ROOT

MESSAGES = 200
#: Every peer that stores its task's result, as Courier does (figure prefixes of the report).
STORING_RESULTS = ("celery_guarantees", "celery_results", "dramatiq", "courier", "courier_stock_engine")


@pytest.mark.timeout(420)
def test_a_tiny_benchmark_run_measures_every_peer_and_stores_every_result(tmp_path):
    out = tmp_path / "bench.json"
    # When the benchmark runs with a few hundred messages and one repetition
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--messages",
            str(MESSAGES),
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
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    # Then every peer stored every task's result, each a successful probe's answer
    for peer in STORING_RESULTS:
        assert figures[f"{peer}.results_stored"]["values"] == [MESSAGES], peer
    # And every figure is there and positive
    rates = {
        "ceiling.publish_1",
        "ceiling.publish_8",
        "ceiling.consume_prefetch_1",
        "ceiling.consume_prefetch_50",
        "celery.enqueue",
        "celery.e2e",
        "celery_results.e2e",
        "celery_guarantees.e2e",
        "dramatiq.e2e_confirms_results",
        "courier.drain_high",
        "courier.drain_medium",
        "courier.drain_low",
        "courier.e2e",
        "courier_stock_engine.e2e",
        "courier.drain_medium_without_history",
    }
    cpu_parts = ("worker_main", "worker_children", "rabbitmq", "redis", "publisher")
    expected = {
        *rates,
        "courier.latency_100rps_p50_ms",
        "courier.latency_100rps_p99_ms",
        "courier.latency_100rps_errors",
        "courier.history_catch_up_s",
        *(
            f"{peer}.e2e_cpu_per_task_{part}_ms"
            for peer in ("courier", "courier_stock_engine")
            for part in (*cpu_parts, "recorder", "postgresql")
        ),
        *(
            f"{peer}.e2e_cpu_per_task_{part}_ms"
            for peer in ("celery", "celery_results", "celery_guarantees")
            for part in cpu_parts
        ),
    }
    assert expected <= set(figures), expected - set(figures)
    assert all(figures[name]["median"] > 0 for name in rates)
    assert figures["courier.e2e_cpu_per_task_worker_children_ms"]["median"] > 0
    assert figures["courier.e2e_cpu_per_task_publisher_ms"]["median"] > 0
    assert figures["courier.latency_100rps_errors"]["median"] == 0
    assert set(report["api"]) == {"c1", "c16", "c64"}
    assert all(level["errors"]["median"] == 0 for level in report["api"].values())
    assert report["machine"]["cores"] and report["versions"]["celery"] and report["versions"]["dramatiq"]
    # And the goals of the issue are judged, each against its bound, the references printed beside them
    assert set(report["goals_met"]) == {
        "e2e_vs_celery_guarantees",
        "e2e_vs_stock_celery_results",
        "e2e_vs_dramatiq_confirms_results",
        "api_c64",
        "latency",
        "history_cost",
    }
    assert set(report["figures_within_goal"]) == set(report["goals"])
    assert "api_c64_vs_single_confirmed_publisher" not in report["goals"]
    assert report["references"]["speed_layer_gain_over_stock_engine"] > 0
    assert report["references"]["e2e_vs_stock_celery_no_results"] > 0
    assert "goals (ratios from this run)" in done.stdout and "references (no goal)" in done.stdout
    assert "CPU per task end to end" in done.stdout and "celery guar." in done.stdout
