"""Courier with its production settings, measured: worker drain, publish end to end, the API, latency, memory.

Courier runs as real processes (workers, recorder, uvicorn, the end-to-end publisher) against its own vhost,
Redis db and PostgreSQL database, set up and removed here; as shipped, or on the stock engine (STOCK_ENGINE).
This module configures the environment before it imports `app`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import (
    REDIS_HOST,
    ROOT,
    Process,
    amqp_url,
    cpu_of,
    percentile,
    pgrep,
    python,
    queue_ready,
    redis_db,
    redis_url,
    stored_answers,
    vhost,
    wait_drained,
    wait_result_keys,
    wait_until,
)

PG_ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Courier on the stock engine: the worker and the publisher on stock Celery/kombu/py-amqp machinery, every
#: correctness guarantee kept (the setting of app/config.py, read from the environment by each process).
STOCK_ENGINE = {"ENGINE_SPEED_PATCHES": "off"}
#: The API's liveness probe: up means serving (unlike /docs, it needs no front-end asset).
LIVE_PATH = "/api/v1/tasks/health/live"


@dataclass
class CourierStack:
    """Courier's settings for one benchmark run, and the processes it started."""

    env: dict[str, str]
    vhost: str
    redis_db: int
    log_dir: Path
    admin_key: str = ""
    processes: dict[str, Process] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], ready: str | None, extra_env: dict[str, str] | None = None) -> Process:
        process = Process(name, cmd, {**self.env, **(extra_env or {})}, self.log_dir)
        self.processes[name] = process
        if ready:
            process.wait_for_log(ready)
        return process

    def start_worker(self, tier: str, extra_env: dict[str, str] | None = None) -> Process:
        return self.start(
            f"worker-{tier}",
            [
                python(),
                "-m",
                "celery",
                "-A",
                "app.tasks",
                "worker",
                "-Q",
                tier,
                "-n",
                f"{tier}@bench",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            "ready.",
            extra_env,
        )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.stop()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


@contextmanager
def courier_stack(log_dir: Path) -> Iterator[CourierStack]:
    """A migrated database, a declared topology and an admin key; everything removed afterwards."""
    database = f"courier_bench_{uuid.uuid4().hex[:6]}"
    with vhost("courier") as name, redis_db() as db, psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        env = {
            "ENVIRONMENT": "test",
            "CELERY_BROKER_URL": amqp_url(name),
            "CELERY_RESULT_BACKEND": redis_url(db),
            "DATABASE_URL": PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}",
            "VAR_DIR": str(log_dir),
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        stack = CourierStack(env=env, vhost=name, redis_db=db, log_dir=log_dir)
        try:
            for step in (["-m", "alembic", "upgrade", "head"], ["-m", "app.cli", "topology", "declare"]):
                subprocess.run([python(), *step], cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True)
            stack.admin_key = subprocess.run(
                [python(), "-m", "app.cli", "create-api-key", "--name", "bench", "--role", "admin"],
                cwd=ROOT,
                env={**os.environ, **env},
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            yield stack
        finally:
            stack.stop_all()
            from app.db import reset_engine

            reset_engine()
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def outside_courier(stack: CourierStack) -> Iterator[None]:
    """While a peer runs: no Courier worker takes CPU from it, and Courier's broker and result URLs, which
    Celery reads from the environment ahead of any configuration, do not steer it (nor reach its processes)."""
    for name in [n for n in stack.processes if n.startswith("worker-")]:
        stack.stop(name)
    saved = {
        name: os.environ.pop(name) for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND") if name in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


def freeze_harness() -> None:
    """Import the publish path now and freeze what this process holds, as the API does at start-up
    (app/memory.py): this process prefills the queues the drains time, and publishes for the Celery peers, from
    the same heap."""
    from app.engine import publish  # noqa: F401
    from app.memory import freeze_start_up_objects

    freeze_start_up_objects()


def publish_many(messages: int, tier: str) -> None:
    """Publish no-op probes from this process through the API's publish path (to prefill a queue; untimed)."""
    import asyncio

    from bench.courier_publisher import publish

    asyncio.run(publish(messages, tier))


def _consumers(stack: CourierStack, tier: str, on: bool) -> None:
    from app.engine.celery_app import celery_app

    control = celery_app.control.add_consumer if on else celery_app.control.cancel_consumer
    # A worker that has just logged "ready." may not be listening to broadcasts yet: ask until it answers.
    for _ in range(20):
        if control(tier, destination=[f"{tier}@bench"], reply=True, timeout=1):
            return
    raise RuntimeError(f"worker {tier}@bench did not answer {control.__name__}; the figure would be wrong")


def drain_rate(stack: CourierStack, tier: str, messages: int, *, history: bool = True) -> float:
    """Prefill a tier, then time its worker draining it (consumers toggled, so the publish is not timed).

    Only the measured worker runs: idle workers on the other tiers would take CPU from it on 2 cores, and the
    figures with and without the history must differ in nothing else.
    """
    worker_env = {"HISTORY_ENABLED": "true" if history else "false"}
    ensure_only_worker(stack, tier, worker_env)
    _consumers(stack, tier, on=False)
    publish_many(messages, tier)
    held = queue_ready(stack.vhost, tier)
    if held < messages:  # a consumer was still on: the drain would be timed from half-way through
        raise RuntimeError(f"{tier} held {held} of {messages} prefilled messages; its consumer was not off")
    started = time.monotonic()
    _consumers(stack, tier, on=True)
    finished = wait_drained(stack.vhost, tier, timeout=900)
    return messages / (finished - started)


def cpu_seconds(stack: CourierStack) -> dict[str, dict[int, float]]:
    """CPU time (user + system) used so far by each part of the stack, from /proc: where a task's cost goes."""
    main = stack.processes["worker-medium"].popen.pid
    groups = {
        "worker_main": [main],
        "worker_children": pgrep("-P", str(main)),
        "recorder": [stack.processes["recorder"].popen.pid],
        "rabbitmq": pgrep("-f", "beam.smp"),
        "redis": pgrep("-x", "redis-server"),
        "postgresql": pgrep("-x", "postgres"),
    }
    return {name: cpu_of(pids) for name, pids in groups.items()}


def recorded_runs() -> int:
    """Finished runs in the history (the bench's own database)."""
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.runs.models import TaskRun

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.state == "SUCCESS")) or 0)


def history_catch_up(stack: CourierStack, expected: int, since: float) -> float:
    """Seconds from `since` (the drain's end) until the history holds `expected` finished runs.

    It polls the journal's length in Redis (the recorder deletes entries once committed) and asks SQL only when
    that is empty, so the probe itself costs PostgreSQL next to nothing.
    """
    journal = redis.Redis(host=REDIS_HOST, db=stack.redis_db)
    try:

        def caught_up() -> bool:
            return journal.xlen("courier:history") == 0 and recorded_runs() >= expected

        return wait_until(caught_up, 300, interval=0.05, what="the history") - since
    finally:
        journal.close()


def ensure_only_worker(stack: CourierStack, tier: str, worker_env: dict[str, str] | None = None) -> None:
    """Leave exactly one worker running: `tier`'s, with `worker_env` (restarted if its environment differs)."""
    name = f"worker-{tier}"
    for other in [n for n in stack.processes if n.startswith("worker-")]:
        process = stack.processes[other]
        if other != name or process.popen.poll() is not None or process.env != {**stack.env, **(worker_env or {})}:
            stack.stop(other)
    if name not in stack.processes:
        stack.start_worker(tier, worker_env)


def stock_engine_known() -> bool:
    """Whether this checkout has the stock-engine switch (without it, Courier 'on the stock engine' is Courier)."""
    from app.config import Settings

    return "engine_speed_patches" in Settings.model_fields


def end_to_end_rate(stack: CourierStack, messages: int, engine_env: dict[str, str]) -> tuple[float, int, float]:
    """(Messages per second from the first confirmed publish until the queue is drained and every result is
    stored, results stored, publisher CPU seconds), the medium worker running; `engine_env` goes to the worker and
    the publisher."""
    ensure_only_worker(stack, "medium", {"HISTORY_ENABLED": "true", **engine_env})
    publisher = subprocess.Popen(
        [python(), "-m", "bench.courier_publisher", "--messages", str(messages), "--tier", "medium"],
        cwd=ROOT,
        env={**os.environ, **stack.env, **engine_env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert publisher.stdin is not None and publisher.stdout is not None
    try:
        if publisher.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the Courier publisher did not start (exit {publisher.wait(30)})")
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        out, _ = publisher.communicate(timeout=900)
    finally:
        if publisher.poll() is None:
            publisher.kill()
    if publisher.returncode != 0:
        raise RuntimeError(f"the Courier publisher failed (exit {publisher.returncode})")
    report = json.loads(out)
    wait_drained(stack.vhost, "medium", timeout=900)
    keys = [f"celery-task-meta-{task_id}" for task_id in report["task_ids"]]
    finished = wait_result_keys(stack.redis_db, keys)
    stored = stored_answers(stack.redis_db, "celery", keys)
    return messages / (finished - report["started"]), stored, float(report["cpu_s"])


def start_api(stack: CourierStack, port: int) -> Process:
    from app.config import get_settings

    workers = str(get_settings().api_workers)
    return stack.start(
        "api",
        [
            python(),
            "-m",
            "uvicorn",
            "app.main:app",
            "--port",
            str(port),
            "--workers",
            workers,
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        None,
    )


def wait_api(port: int) -> None:
    import httpx

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{LIVE_PATH}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, interval=0.2, what="the API")


def loadgen(stack: CourierStack, port: int, *args: str) -> dict[str, Any]:
    """Run the load generator as a separate process and return its JSON."""
    done = subprocess.run(
        [
            python(),
            "-m",
            "bench.loadgen",
            "--url",
            f"http://127.0.0.1:{port}/api/v1/tasks/ping",
            "--key",
            stack.admin_key,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return dict(json.loads(done.stdout))


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"tier": "medium"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    errors.status + errors.connect + errors.read + errors.write + errors.timeout))
end
"""


def api_dispatch(stack: CourierStack, port: int, concurrency: int, requests: int) -> dict[str, float]:
    """Requests per second and latency percentiles (ms) of authenticated, confirmed dispatches.

    With wrk installed (Debian package `wrk`), wrk drives the load for about `requests / 500` seconds; without
    it, the Python load generator sends `requests` requests (it tops out near 300 req/s on 2 cores).
    """
    import shutil

    if shutil.which("wrk"):
        script = stack.log_dir / "post.lua"
        script.write_text(WRK_SCRIPT % stack.admin_key)
        seconds = max(2, requests // 500)
        done = subprocess.run(
            [
                "wrk",
                "-t",
                str(min(2, concurrency)),
                "-c",
                str(concurrency),
                "-d",
                f"{seconds}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/api/v1/tasks/ping",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("WRK "))
        count, duration_us, p50, p95, p99, errors = (int(v) for v in line.split()[1:])
        return {
            "rps": count / (duration_us / 1e6),
            "p50_ms": p50 / 1000,
            "p95_ms": p95 / 1000,
            "p99_ms": p99 / 1000,
            "errors": errors,
        }
    run = loadgen(stack, port, "--concurrency", str(concurrency), "--requests", str(requests))
    latencies = [r["latency_s"] * 1000 for r in run["results"]]
    errors = sum(1 for r in run["results"] if r["status"] != 202)
    return {
        "rps": len(latencies) / run["elapsed_s"],
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "errors": errors,
    }


def e2e_latency(stack: CourierStack, port: int, rate: float, duration: float) -> dict[str, float]:
    """POST → SUCCESS latency (ms) at a steady request rate: send time to the result's `date_done`."""
    from datetime import datetime

    run = loadgen(stack, port, "--rate", str(rate), "--duration", str(duration))
    client = redis.Redis(host=REDIS_HOST, db=stack.redis_db)
    task_ids = [r["task_id"] for r in run["results"] if r["status"] == 202]

    def all_done() -> bool:
        return all(client.exists(f"celery-task-meta-{t}") for t in task_ids)

    wait_until(all_done, 120, interval=0.2, what="every result")
    latencies = []
    for result in run["results"]:
        if result["status"] != 202:
            continue
        meta = json.loads(client.get(f"celery-task-meta-{result['task_id']}") or b"{}")
        done = datetime.fromisoformat(meta["date_done"]).timestamp()
        latencies.append((done - result["sent_at"]) * 1000)
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": float(len(run["results"]) - len(task_ids)),
    }


def purge(stack: CourierStack, queue: str) -> None:
    """Drop the ready messages of a queue (between API runs, which only publish)."""
    import pika

    from bench.common import amqp_url as url

    connection = pika.BlockingConnection(pika.URLParameters(url(stack.vhost)))
    connection.channel().queue_purge(queue)
    connection.close()
