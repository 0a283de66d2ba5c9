"""The console part of the benchmark (`python -m bench --parts console`): how fast every console page answers
with a production-sized history.

In a database of its own (bench/courier_bench.py's stack: its own vhost, Redis db and PostgreSQL database, all
removed afterwards) it seeds --console-runs task runs over the last week (a steady share in the last hour, so the
overview's charts have data) and --console-letters dead letters in a few dozen groups, each with its failed
attempt, then starts the API as a real process, signs in to the console as an admin through its form, and times
--console-samples requests of each page after a warm-up. Each page's p95 is printed against the goal (< 200 ms).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg

from bench.common import percentile

#: The goal of every page, p95, in milliseconds.
GOAL_P95_MS = 200.0
#: Requests of a page before the timed ones (each API worker's first queries and template compiles).
WARM_UP = 5
#: The tasks and failures the seeded history is made of.
TASKS = (
    "identity.send_password_reset",
    "identity.verify_email",
    "notifications.send_email",
    "notifications.send_sms",
    "integrations.sync_external",
    "integrations.deliver_webhook",
    "audit.generate_daily_report",
    "system.ping",
)
FAILURES = (
    ("retries_exhausted", "ConnectionError", "ConnectionError: provider unreachable"),
    ("failed", "PermanentError", "PermanentError: 422 from the provider"),
    ("timeout", "TimeLimitExceeded", "TimeLimitExceeded: 30 s"),
    ("worker_lost", "WorkerLostError", "WorkerLostError: the pool process died"),
)
LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def seed(dsn: str, runs: int, letters: int) -> dict[str, Any]:
    """COPY `runs` task runs and `letters` dead letters (each with its failed attempt) into the database at `dsn`;
    a sample task id and letter id for the detail pages."""
    rng = random.Random(18)
    now = datetime.now(UTC)
    week_s = 7 * 86_400
    in_last_hour = max(1, runs // 50)
    dead_ids = []
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(
            "COPY task_runs (task_id, name, tier, state, attempts, triggered_by, worker, received_at, started_at, "
            "finished_at, runtime_s, error, event_at, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(runs):
                age = rng.uniform(0, 3600) if i < in_last_hour else rng.uniform(3600, week_s)
                created = now - timedelta(seconds=age)
                runtime = rng.uniform(0.005, 2.0)
                state = "DEAD_LETTERED" if i < letters else rng.choice(("SUCCESS",) * 18 + ("FAILURE", "REVOKED"))
                task_id = str(uuid.UUID(int=rng.getrandbits(128)))
                if i < letters:
                    dead_ids.append((task_id, created))
                finished = created + timedelta(seconds=runtime + 0.01)
                copy.write_row(
                    (
                        task_id,
                        rng.choice(TASKS),
                        rng.choice(("high", "medium", "low")),
                        state,
                        1 if state == "SUCCESS" else 3,
                        rng.choice(("web-frontend", "billing", "ops-admin", "crm-sync")),
                        f"{rng.choice(('high', 'medium', 'low'))}@worker-{rng.randint(1, 6)}",
                        created,
                        created + timedelta(milliseconds=5),
                        finished,
                        runtime,
                        "PermanentError: seeded" if state in ("FAILURE", "DEAD_LETTERED") else None,
                        finished,
                        created,
                        finished,
                    )
                )
        with cursor.copy(
            "COPY dead_letters (fingerprint, task_id, task_name, reason, error_class, error, traceback, args, kwargs, "
            "queue, exchange, routing_key, retries, death_count, first_death_at, last_death_at, replays, status, "
            "recorded_at, content_type, content_encoding, properties, headers, body, body_base64) FROM STDIN"
        ) as copy:
            for n, (task_id, created) in enumerate(dead_ids):
                reason, error_class, error = FAILURES[n % len(FAILURES)]
                name = TASKS[n % len(TASKS)]
                kwargs = {"user_id": n, "email": f"user{n}@example.com"}
                copy.write_row(
                    (
                        uuid.uuid4().hex + uuid.uuid4().hex,
                        task_id,
                        name,
                        reason,
                        error_class,
                        error,
                        f'Traceback (most recent call last):\n  File "app/tasks.py", line 1\n{error}',
                        json.dumps([]),
                        json.dumps(kwargs),
                        "medium",
                        "courier.tasks",
                        "medium",
                        3,
                        1,
                        created,
                        created,
                        0,
                        "pending" if n % 5 else "replayed",
                        created,
                        "application/json",
                        "utf-8",
                        json.dumps({"correlation_id": task_id}),
                        json.dumps({"id": task_id, "task": name, "x-death": [{"count": 1, "reason": "rejected"}]}),
                        json.dumps([[], kwargs, {}]),
                        False,
                    )
                )
        with cursor.copy(
            "COPY task_attempts (task_id, attempt, outcome, error, traceback, worker, at) FROM STDIN"
        ) as copy:
            for task_id, created in dead_ids:
                copy.write_row((task_id, 3, "failure", "PermanentError: seeded", None, "medium@worker-1", created))
        cursor.execute("ANALYZE task_runs")
        cursor.execute("ANALYZE dead_letters")
        cursor.execute("ANALYZE task_attempts")
        letter_id = cursor.execute("SELECT max(id) FROM dead_letters").fetchone()
        deep = cursor.execute(
            "SELECT created_at, task_id FROM task_runs ORDER BY created_at DESC, task_id OFFSET %s LIMIT 1",
            (runs // 2,),
        ).fetchone()
    return {
        "task_id": dead_ids[0][0] if dead_ids else None,
        "letter_id": letter_id[0] if letter_id else None,
        # The "Older" link of the page half-way down the history (the console pages runs by keyset).
        "deep_after": f"{deep[0].isoformat()}~{deep[1]}" if deep else "",
    }


def sign_in(client: httpx.Client, key: str) -> None:
    """Sign in through the console's form, as a browser does."""
    form = client.get("/console/login")
    token = LOGIN_TOKEN.search(form.text)
    assert token is not None, form.text[:500]
    answer = client.post("/console/login", data={"api_key": key, "login_token": token.group(1)})
    assert answer.status_code == 303, answer.text[:500]


def pages(sample: dict[str, Any], runs: int) -> dict[str, str]:
    """The pages timed: each list unfiltered, filtered and deep in its pages, and each detail page."""
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    return {
        "overview": "/console/",
        "overview figures (live refresh)": "/console/overview/live",
        "overview chart data": "/console/overview/series.json",
        "dead letters (pending, groups)": "/console/dead-letters",
        "dead letters: one group": "/console/dead-letters?task_name=system.ping&reason=worker_lost",
        "dead letters: any status, last day": f"/console/dead-letters?status=any&since={since}",
        "dead letters: page 100": "/console/dead-letters?offset=4950",
        "dead letter": f"/console/dead-letters/{sample['letter_id']}",
        "bulk replay dry run (all pending)": "/console/dead-letters/bulk/replay",
        "runs": "/console/runs",
        "runs: state SUCCESS": "/console/runs?state=SUCCESS",
        "runs: task and caller": "/console/runs?name=system.ping&triggered_by=billing",
        "runs: page 1,000 (Older link)": f"/console/runs?{urlencode({'after': sample['deep_after'], 'at': runs // 2})}",
        "run": f"/console/runs/{sample['task_id']}",
        "queues & workers": "/console/queues",
        "audit trail": "/console/audit",
        "audit chain verification": "/console/audit/verification",
    }


def time_pages(base: str, key: str, targets: dict[str, str], samples: int) -> dict[str, dict[str, float]]:
    """p50, p95 and max (ms) of `samples` sequential requests of each page, after WARM_UP untimed ones."""
    figures = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        sign_in(client, key)
        for name, path in targets.items():
            for _ in range(WARM_UP):
                answer = client.get(path)
                assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                answer = client.get(path)
                times.append(1000 * (time.perf_counter() - started))
                assert answer.status_code == 200, f"{path}: {answer.status_code}"
            figures[name] = {
                "p50_ms": round(percentile(times, 50), 1),
                "p95_ms": round(percentile(times, 95), 1),
                "max_ms": round(max(times), 1),
            }
    return figures


def run(args: Any, log_dir: Any, port: int) -> dict[str, Any]:
    """Seed a stack of its own, start the API, time every page; the console part of the report."""
    from bench import courier_bench as cb

    with cb.courier_stack(log_dir) as stack:
        dsn = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        started = time.monotonic()
        sample = seed(dsn, args.console_runs, args.console_letters)
        seeded_s = round(time.monotonic() - started, 1)
        cb.start_api(stack, port)
        cb.wait_api(port)
        figures = time_pages(
            f"http://127.0.0.1:{port}", stack.admin_key, pages(sample, args.console_runs), args.console_samples
        )
    return {
        "runs": args.console_runs,
        "dead_letters": args.console_letters,
        "samples": args.console_samples,
        "seed_s": seeded_s,
        "goal_p95_ms": GOAL_P95_MS,
        "pages": figures,
        "all_within_goal": all(f["p95_ms"] < GOAL_P95_MS for f in figures.values()),
    }


def table(report: dict[str, Any]) -> list[str]:
    """The console part's lines of the printed report."""
    rows = [
        "",
        f"console pages ({report['runs']:,} runs, {report['dead_letters']:,} dead letters, "
        f"{report['samples']} requests each; goal p95 < {report['goal_p95_ms']:.0f} ms):",
        f"  {'page':<40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}",
    ]
    for name, figure in report["pages"].items():
        verdict = "met" if figure["p95_ms"] < report["goal_p95_ms"] else "NOT met"
        rows.append(
            f"  {name:<40} {figure['p50_ms']:>8.1f} {figure['p95_ms']:>8.1f} {figure['max_ms']:>8.1f}   {verdict}"
        )
    rows.append(f"  every page within the goal: {'yes' if report['all_within_goal'] else 'NO'}")
    return rows
