"""Courier's benchmark: `python -m bench` (or ./scripts/bench.sh). See README, "Performance".

Measures, on the same broker and in one run: raw AMQP with Courier's guarantees (pika), stock Celery, Dramatiq
with confirms off and on, and Courier with its production settings. Every figure is the median of --reps
repetitions (min–max shown). Writes a JSON file and prints a table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import peers
from bench.common import ROOT, Stat

API_PORT = 8765
#: What a run can measure: the peers (ceiling, stock Celery, Dramatiq), Courier's workers, Courier's API.
PARTS = ("peers", "courier", "api")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000, help="messages per throughput run")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests per API dispatch run")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="duration of the 100 req/s run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every figure")
    parser.add_argument("--publishers", type=int, default=8, help="concurrent publishers for the AMQP ceiling")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/<time>.json)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (ratios need peers and courier)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, `args.reps` times; returns the report.

    Each repetition measures the peers and Courier back to back, and the three end-to-end figures the goals
    compare next to each other (stock Celery, Courier, Dramatiq with confirms): this machine's speed drifts by
    minutes, and a ratio of figures taken minutes apart measured the drift as much as the software.
    """
    from bench import courier_bench as cb

    log_dir = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    stats: dict[str, Stat] = defaultdict(Stat)
    api: dict[int, dict[str, Stat]] = defaultdict(lambda: defaultdict(Stat))
    n = args.messages
    parts = set(args.parts.split(","))
    memory: dict[str, int] = {}
    with cb.courier_stack(log_dir) as stack:
        stack.start("recorder", [cb.python(), "-m", "app.recorder"], None)
        cb.freeze_harness()
        for _ in range(args.reps):
            if "peers" in parts:
                for key, value in peers.ceiling(n, args.publishers).items():
                    stats[key].values.append(value)
            if "courier" in parts:
                _courier_drains(stats, cb, stack, n)
            if "peers" in parts:
                with cb.outside_courier(stack):
                    enqueue, e2e, cpu = peers.stock_celery(n, log_dir)
                stats["celery.enqueue"].values.append(enqueue)
                stats["celery.e2e"].values.append(e2e)
                for part, ms in cpu.items():  # (where stock Celery's CPU goes, next to Courier's)
                    stats[f"celery.e2e_cpu_per_task_{part}_ms"].values.append(ms)
            if "courier" in parts:
                _courier_e2e(stats, cb, stack, n)
            if "peers" in parts:
                with cb.outside_courier(stack):
                    stats["dramatiq.e2e_confirms_on"].values.append(peers.dramatiq_e2e(n, True, log_dir))
                    stats["dramatiq.e2e_confirms_off"].values.append(peers.dramatiq_e2e(n, False, log_dir))
        stack.stop("worker-medium")
        if "api" not in parts:
            return _report(args, stats, api, memory)
        cb.start_api(stack, API_PORT)
        cb.wait_api(API_PORT)
        for _ in range(args.reps):
            for concurrency in (1, 16, 64):
                figures = cb.api_dispatch(stack, API_PORT, concurrency, args.requests)
                for key, value in figures.items():
                    api[concurrency][key].values.append(value)
                cb.purge(stack, "medium")
        stack.start_worker("medium")
        for _ in range(args.reps):
            figures = cb.e2e_latency(stack, API_PORT, 100, args.latency_seconds)
            for key, value in figures.items():
                stats[f"courier.latency_100rps_{key}"].values.append(value)
        memory = {
            "api_kib": stack.processes["api"].rss_kib(),
            "worker_medium_kib": stack.processes["worker-medium"].rss_kib(),
            "recorder_kib": stack.processes["recorder"].rss_kib(),
        }
    return _report(args, stats, api, memory)


def _courier_drains(stats: dict[str, Stat], cb: Any, stack: Any, n: int) -> None:
    """One repetition of Courier's drain rates: each tier, then medium without the history."""
    for tier in ("high", "low", "medium"):
        recorded = cb.recorded_runs()
        stats[f"courier.drain_{tier}"].values.append(cb.drain_rate(stack, tier, n))
        # The history is written behind the workers: how long after the drain it holds every run.
        stats["courier.history_catch_up_s"].values.append(cb.history_catch_up(stack, recorded + n, time.monotonic()))
    # Right after the medium drain with the history, in the same conditions: the history's cost.
    stats["courier.drain_medium_without_history"].values.append(cb.drain_rate(stack, "medium", n, history=False))


def _courier_e2e(stats: dict[str, Stat], cb: Any, stack: Any, n: int) -> None:
    """One repetition of Courier's end-to-end rate, with the CPU per task of each part."""
    cb.ensure_only_worker(stack, "medium", {"HISTORY_ENABLED": "true"})  # (started before the CPU count,
    time.sleep(2)  # and settled: its boot is not a task's cost)
    recorded, cpu_before = cb.recorded_runs(), cb.cpu_seconds(stack)
    stats["courier.e2e"].values.append(cb.end_to_end_rate(stack, n))
    cb.history_catch_up(stack, recorded + n, time.monotonic())  # (so the next figure starts from a quiet history)
    for part, spent in cb.cpu_seconds(stack).items():
        # CPU per task of each part, from the publish to the history
        stats[f"courier.e2e_cpu_per_task_{part}_ms"].values.append(1000 * (spent - cpu_before[part]) / n)


def _ratio(a: Stat, b: Stat) -> float:
    return round(a.median / b.median, 2) if b.median else float("nan")


def _report(
    args: argparse.Namespace, stats: dict[str, Stat], api: dict[int, dict[str, Stat]], memory: dict[str, int]
) -> dict[str, Any]:
    history_cost = 1 - stats["courier.drain_medium"].median / stats["courier.drain_medium_without_history"].median
    c64 = api[64] if 64 in api else defaultdict(Stat)
    goals = {
        "e2e_vs_stock_celery": _ratio(stats["courier.e2e"], stats["celery.e2e"]),
        "e2e_vs_dramatiq_confirms": _ratio(stats["courier.e2e"], stats["dramatiq.e2e_confirms_on"]),
        "api_c64_vs_single_confirmed_publisher": _ratio(c64["rps"], stats["ceiling.publish_1"]),
        "api_c64_p99_ms": round(c64["p99_ms"].median, 1),
        "latency_100rps_p50_ms": round(stats["courier.latency_100rps_p50_ms"].median, 1),
        "latency_100rps_p99_ms": round(stats["courier.latency_100rps_p99_ms"].median, 1),
        "history_cost": round(history_cost, 3),
    }
    # Each printed figure against its own bound (a goal of two figures is met when both are).
    within = {
        "e2e_vs_stock_celery": goals["e2e_vs_stock_celery"] >= 1.0,
        "e2e_vs_dramatiq_confirms": goals["e2e_vs_dramatiq_confirms"] >= 1.0,
        "api_c64_vs_single_confirmed_publisher": goals["api_c64_vs_single_confirmed_publisher"] >= 2.0,
        "api_c64_p99_ms": goals["api_c64_p99_ms"] < 50 and c64["errors"].median == 0,
        "latency_100rps_p50_ms": goals["latency_100rps_p50_ms"] < 10,
        "latency_100rps_p99_ms": goals["latency_100rps_p99_ms"] < 50,
        "history_cost": history_cost < 0.10,
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": {p: version(p) for p in ("celery", "kombu", "dramatiq", "pika", "fastapi", "uvicorn")},
        "sizes": {
            "messages": args.messages,
            "requests": args.requests,
            "latency_seconds": args.latency_seconds,
            "reps": args.reps,
        },
        "figures": {k: v.as_dict() for k, v in sorted(stats.items()) if v.values},
        "api": {f"c{c}": {k: v.as_dict() for k, v in figures.items()} for c, figures in sorted(api.items())},
        "memory": memory,
        "goals": goals,
        "goals_met": {
            "e2e_vs_stock_celery": within["e2e_vs_stock_celery"],
            "e2e_vs_dramatiq_confirms": within["e2e_vs_dramatiq_confirms"],
            "api_c64": within["api_c64_vs_single_confirmed_publisher"] and within["api_c64_p99_ms"],
            "latency": within["latency_100rps_p50_ms"] and within["latency_100rps_p99_ms"],
            "history_cost": within["history_cost"],
        },
        "figures_within_goal": within,
    }


def _table(report: dict[str, Any]) -> str:
    def line(name: str, figure: dict[str, Any], unit: str = "/s") -> str:
        return f"  {name:<42} {figure['median']:>10.1f}{unit:<4} ({figure['min']:.1f}–{figure['max']:.1f})"

    rows = [
        f"Courier benchmark — {report['date']}, {report['machine']['cores']} cores, "
        f"{', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"sizes: {report['sizes']}",
        "",
        "throughput (messages per second, median of reps, min–max):",
    ]
    rows += [
        line(name, figure)
        for name, figure in report["figures"].items()
        if "latency" not in name and not name.endswith(("_s", "_ms"))
    ]
    rows += [line(name, figure, " s") for name, figure in report["figures"].items() if name.endswith("_s")]
    rows += _cpu_table(report["figures"])
    rows += ["", "API dispatch (authenticated, confirmed):"]
    for level, figures in report["api"].items():
        rows.append(
            f"  {level:<4} {figures['rps']['median']:>8.1f} req/s   p50 {figures['p50_ms']['median']:.1f} ms"
            f"   p95 {figures['p95_ms']['median']:.1f} ms   p99 {figures['p99_ms']['median']:.1f} ms"
            f"   errors {figures['errors']['median']:.0f}"
        )
    rows += [
        "",
        f"end-to-end latency at 100 req/s: p50 {report['goals']['latency_100rps_p50_ms']} ms, "
        f"p99 {report['goals']['latency_100rps_p99_ms']} ms",
        f"memory after the run (KiB): {report['memory']}",
        "",
        "goals (ratios from this run):",
    ]
    rows += [
        f"  {name:<40} {value!s:>8}   {'met' if report['figures_within_goal'][name] else 'NOT met'}"
        for name, value in report["goals"].items()
    ]
    return "\n".join(rows)


def _cpu_table(figures: dict[str, Any]) -> list[str]:
    """CPU per task end to end of each part, Courier's next to stock Celery's (medians, ms)."""
    by_part: dict[str, dict[str, float]] = defaultdict(dict)
    for name, figure in figures.items():
        if "_cpu_per_task_" in name:
            peer, part = name.split(".", 1)[0], name.split("_cpu_per_task_")[1].removesuffix("_ms")
            by_part[part][peer] = figure["median"]
    if not by_part:
        return []
    columns = ("courier", "celery")
    totals = {peer: sum(spent.get(peer, 0.0) for spent in by_part.values()) for peer in columns}

    def row(label: str, spent: dict[str, float]) -> str:
        return f"  {label:<20}" + "".join(f" {spent[p]:>13.3f}" if p in spent else f" {'-':>13}" for p in columns)

    return [
        "",
        "CPU per task end to end (ms, all processes; where the 2 cores go):",
        f"  {'part':<20} {'courier':>13} {'stock celery':>13}",
        *(row(part, spent) for part, spent in by_part.items()),
        row("total", {peer: total for peer, total in totals.items() if total}),
    ]


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`."""
    args = _args(argv)
    # Celery reads these ahead of its configuration: they must not steer the peers (Courier's are set later).
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(name, None)
    started = time.monotonic()
    report = run(args)
    report["duration_s"] = round(time.monotonic() - started, 1)
    out = args.out or ROOT / "bench-results" / f"bench-{report['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(_table(report))  # noqa: T201 (a CLI report)
    print(f"\nwritten to {out} in {report['duration_s']} s")  # noqa: T201


if __name__ == "__main__":
    main()
