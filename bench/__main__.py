"""Courier's benchmark: `python -m bench` (or ./scripts/bench.sh). See README, "Performance".

Measures, on the same broker and in one run: raw AMQP with Courier's guarantees (pika); the peers, each storing
its task's result as Courier does: Celery configured by hand with Courier's guarantees, stock Celery with a Redis
result backend, Dramatiq with confirms and Redis results (stock Celery without results as a reference line);
Courier on the stock engine (ENGINE_SPEED_PATCHES=off) and Courier as shipped. Every figure is the median of
--reps repetitions (min–max shown). Writes a JSON file and prints a table with the ratios and the goals.
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
from bench.common import ROOT, Stat, cpu_spent

API_PORT = 8765
#: The Celery flavours measured end to end (bench/celery_peers.py), and each one's figure prefix.
CELERY_PEERS = {"stock": "celery", "stock_results": "celery_results", "guarantees": "celery_guarantees"}
#: What a run can measure: the peers (ceiling, Celery, Dramatiq), Courier's workers, Courier's API, and the
#: console's pages on a seeded history (bench/console.py; only when asked for: `--parts console`).
PARTS = ("peers", "courier", "api")
OPTIONAL_PARTS = ("console",)
CONSOLE_PORT = 8766


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
        help=f"comma-separated subset of {','.join(PARTS + OPTIONAL_PARTS)} (ratios need peers and courier)",
    )
    parser.add_argument("--console-runs", type=int, default=100_000, help="task runs the console part seeds")
    parser.add_argument("--console-letters", type=int, default=10_000, help="dead letters the console part seeds")
    parser.add_argument("--console-samples", type=int, default=40, help="timed requests of each console page")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, `args.reps` times; returns the report.

    Each repetition measures the peers and Courier back to back, and the end-to-end figures the goals compare
    next to each other (the Celery peers, Courier as shipped and on the stock engine, Dramatiq): this machine's
    speed drifts by minutes, and a ratio of figures taken minutes apart measured the drift as much as the software.
    """
    from bench import courier_bench as cb

    log_dir = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    stats: dict[str, Stat] = defaultdict(Stat)
    api: dict[int, dict[str, Stat]] = defaultdict(lambda: defaultdict(Stat))
    n = args.messages
    parts = set(args.parts.split(","))
    memory: dict[str, int] = {}
    if "console" in parts:
        from bench import console

        measured = console.run(args, log_dir, CONSOLE_PORT)
        if not parts - {"console"}:
            return {**_header(args), "console": measured}
        return {
            **run(argparse.Namespace(**{**vars(args), "parts": ",".join(parts - {"console"})})),
            "console": measured,
        }
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
                    stats["celery.enqueue"].values.append(peers.stock_celery_enqueue(n))
                    for flavour, prefix in CELERY_PEERS.items():
                        e2e, stored, cpu = peers.celery_e2e(flavour, n, log_dir)
                        stats[f"{prefix}.e2e"].values.append(e2e)
                        stats[f"{prefix}.results_stored"].values.append(stored)
                        for part, ms in cpu.items():  # (where each peer's CPU goes, next to Courier's)
                            stats[f"{prefix}.e2e_cpu_per_task_{part}_ms"].values.append(ms)
            if "courier" in parts:
                _courier_e2e(stats, cb, stack, n, "courier", {})
                _courier_e2e(stats, cb, stack, n, "courier_stock_engine", cb.STOCK_ENGINE)
            if "peers" in parts:
                with cb.outside_courier(stack):
                    e2e, stored, cpu = peers.dramatiq_e2e(n, log_dir)
                    stats["dramatiq.e2e_confirms_results"].values.append(e2e)
                    stats["dramatiq.results_stored"].values.append(stored)
                    for part, ms in cpu.items():
                        stats[f"dramatiq.e2e_cpu_per_task_{part}_ms"].values.append(ms)
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


def _courier_e2e(stats: dict[str, Stat], cb: Any, stack: Any, n: int, prefix: str, engine: dict[str, str]) -> None:
    """One repetition of Courier's end-to-end rate (with the `engine` environment), with the CPU per task of each
    part; figures named `prefix`."""
    cb.ensure_only_worker(stack, "medium", {"HISTORY_ENABLED": "true", **engine})  # (started before the CPU count,
    time.sleep(2)  # and settled: its boot is not a task's cost)
    recorded, cpu_before = cb.recorded_runs(), cb.cpu_seconds(stack)
    rate, stored, publisher_cpu_s = cb.end_to_end_rate(stack, n, engine)
    stats[f"{prefix}.e2e"].values.append(rate)
    stats[f"{prefix}.results_stored"].values.append(stored)
    cb.history_catch_up(stack, recorded + n, time.monotonic())  # (so the next figure starts from a quiet history)
    spent = {part: cpu_spent(cpu_before[part], after) for part, after in cb.cpu_seconds(stack).items()}
    for part, seconds in {**spent, "publisher": publisher_cpu_s}.items():
        # CPU per task of each part, from the publish to the history
        stats[f"{prefix}.e2e_cpu_per_task_{part}_ms"].values.append(1000 * seconds / n)


def _ratio(a: Stat, b: Stat) -> float:
    return round(a.median / b.median, 2) if b.median else float("nan")


#: The goals: the figure each one reads, and its bound. Ratios are Courier's end-to-end rate over a peer's.
GOALS = {
    "e2e_vs_celery_guarantees": ">= 1.5",
    "e2e_vs_stock_celery_results": ">= 1.0",
    "e2e_vs_dramatiq_confirms_results": ">= 1.2",
    "api_c64_p99_ms": "< 50, no errors",
    "latency_100rps_p50_ms": "< 10",
    "latency_100rps_p99_ms": "< 50",
    "history_cost": "< 0.10",
}


def _header(args: argparse.Namespace) -> dict[str, Any]:
    """When, where and with what sizes a run measured."""
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
    }


def _report(
    args: argparse.Namespace, stats: dict[str, Stat], api: dict[int, dict[str, Stat]], memory: dict[str, int]
) -> dict[str, Any]:
    from bench.courier_bench import stock_engine_known

    history_cost = 1 - stats["courier.drain_medium"].median / stats["courier.drain_medium_without_history"].median
    c64 = api[64] if 64 in api else defaultdict(Stat)
    e2e = stats["courier.e2e"]
    goals = {
        "e2e_vs_celery_guarantees": _ratio(e2e, stats["celery_guarantees.e2e"]),
        "e2e_vs_stock_celery_results": _ratio(e2e, stats["celery_results.e2e"]),
        "e2e_vs_dramatiq_confirms_results": _ratio(e2e, stats["dramatiq.e2e_confirms_results"]),
        "api_c64_p99_ms": round(c64["p99_ms"].median, 1),
        "latency_100rps_p50_ms": round(stats["courier.latency_100rps_p50_ms"].median, 1),
        "latency_100rps_p99_ms": round(stats["courier.latency_100rps_p99_ms"].median, 1),
        "history_cost": round(history_cost, 3),
    }
    # Each printed figure against its own bound (NaN, a figure this run did not measure, is never within).
    within = {
        "e2e_vs_celery_guarantees": goals["e2e_vs_celery_guarantees"] >= 1.5,
        "e2e_vs_stock_celery_results": goals["e2e_vs_stock_celery_results"] >= 1.0,
        "e2e_vs_dramatiq_confirms_results": goals["e2e_vs_dramatiq_confirms_results"] >= 1.2,
        "api_c64_p99_ms": goals["api_c64_p99_ms"] < 50 and c64["errors"].median == 0,
        "latency_100rps_p50_ms": goals["latency_100rps_p50_ms"] < 10,
        "latency_100rps_p99_ms": goals["latency_100rps_p99_ms"] < 50,
        "history_cost": history_cost < 0.10,
    }
    # Printed without a bound: what the speed layer buys, and the stock Celery run that stores no result.
    references = {
        "speed_layer_gain_over_stock_engine": _ratio(e2e, stats["courier_stock_engine.e2e"]),
        "e2e_vs_stock_celery_no_results": _ratio(e2e, stats["celery.e2e"]),
    }
    return {
        **_header(args),
        # Without the switch in this checkout, "courier_stock_engine" ran exactly as Courier as shipped.
        "stock_engine_switch": stock_engine_known(),
        "figures": {k: v.as_dict() for k, v in sorted(stats.items()) if v.values},
        "api": {f"c{c}": {k: v.as_dict() for k, v in figures.items()} for c, figures in sorted(api.items())},
        "memory": memory,
        "goals": goals,
        "goals_met": {
            "e2e_vs_celery_guarantees": within["e2e_vs_celery_guarantees"],
            "e2e_vs_stock_celery_results": within["e2e_vs_stock_celery_results"],
            "e2e_vs_dramatiq_confirms_results": within["e2e_vs_dramatiq_confirms_results"],
            "api_c64": within["api_c64_p99_ms"],
            "latency": within["latency_100rps_p50_ms"] and within["latency_100rps_p99_ms"],
            "history_cost": within["history_cost"],
        },
        "figures_within_goal": within,
        "references": references,
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
        if "latency" not in name and not name.endswith(("_s", "_ms", "results_stored"))
    ]
    stored = {name.split(".")[0]: f"{figure['min']:.0f}" for name, figure in report["figures"].items()}
    stored = {peer: count for peer, count in stored.items() if f"{peer}.results_stored" in report["figures"]}
    rows.append(f"  results stored (each run, fewest; of {report['sizes']['messages']}): {stored}")
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
        f"  {name:<40} {value!s:>8}   {GOALS[name]:<16} {'met' if report['figures_within_goal'][name] else 'NOT met'}"
        for name, value in report["goals"].items()
    ]
    rows += ["", "references (no goal):"]
    rows += [f"  {name:<40} {value!s:>8}" for name, value in report["references"].items()]
    if not report["stock_engine_switch"]:
        rows.append(
            "  (ENGINE_SPEED_PATCHES is not a setting in this checkout: Courier on the stock engine ran as shipped)"
        )
    return "\n".join(rows)


#: The CPU table's columns: figure prefix → heading.
CPU_COLUMNS = {
    "courier": "courier",
    "courier_stock_engine": "stock engine",
    "celery_guarantees": "celery guar.",
    "celery_results": "celery+results",
    "celery": "stock celery",
    "dramatiq": "dramatiq",
}


def _cpu_table(figures: dict[str, Any]) -> list[str]:
    """CPU per task end to end of each part, Courier's next to the peers' (medians, ms)."""
    by_part: dict[str, dict[str, float]] = defaultdict(dict)
    for name, figure in figures.items():
        if "_cpu_per_task_" in name:
            peer, part = name.split(".", 1)[0], name.split("_cpu_per_task_")[1].removesuffix("_ms")
            by_part[part][peer] = figure["median"]
    if not by_part:
        return []
    columns = [peer for peer in CPU_COLUMNS if any(peer in spent for spent in by_part.values())]
    totals = {peer: sum(spent.get(peer, 0.0) for spent in by_part.values()) for peer in columns}

    def row(label: str, spent: dict[str, float]) -> str:
        return f"  {label:<20}" + "".join(f" {spent[p]:>15.3f}" if p in spent else f" {'-':>15}" for p in columns)

    return [
        "",
        "CPU per task end to end (ms, all processes; where the 2 cores go):",
        f"  {'part':<20}" + "".join(f" {CPU_COLUMNS[p]:>15}" for p in columns),
        *(row(part, spent) for part, spent in by_part.items()),
        row("total", totals),
    ]


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`."""
    args = _args(argv)
    # Celery reads these ahead of its configuration: they must not steer the peers (Courier's are set later).
    # ENGINE_SPEED_PATCHES is set only for Courier on the stock engine: Courier as shipped runs with the default.
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "ENGINE_SPEED_PATCHES"):
        os.environ.pop(name, None)
    started = time.monotonic()
    report = run(args)
    report["duration_s"] = round(time.monotonic() - started, 1)
    out = args.out or ROOT / "bench-results" / f"bench-{report['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if "figures" in report:
        print(_table(report))  # noqa: T201 (a CLI report)
    if "console" in report:
        from bench import console

        print("\n".join(console.table(report["console"])))  # noqa: T201
    print(f"\nwritten to {out} in {report['duration_s']} s")  # noqa: T201


if __name__ == "__main__":
    main()
