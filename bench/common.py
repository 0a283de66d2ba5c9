"""Shared plumbing of the benchmark: isolated vhosts, process control, queue polling, statistics."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pika
import redis

ROOT = Path(__file__).resolve().parent.parent
AMQP_HOST = os.environ.get("BENCH_RABBITMQ_HOST", "127.0.0.1")
MGMT_URL = os.environ.get("BENCH_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MGMT_AUTH = (os.environ.get("BENCH_RABBITMQ_USER", "guest"), os.environ.get("BENCH_RABBITMQ_PASSWORD", "guest"))
REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
#: The claim key of tests/conftest.py: a benchmark and test sessions running at once never share a Redis db.
CLAIM_KEY = "courier-test:claim"
#: The key earlier benchmarks claimed a db with: held too, so one of them running beside this one keeps off it.
LEGACY_CLAIM_KEY = "courier-bench:claim"
CLAIM_KEYS = (CLAIM_KEY, LEGACY_CLAIM_KEY)
#: Claims a db only when no claim of either kind holds it, both keys at once.
_CLAIM = (
    "if redis.call('exists', KEYS[1]) + redis.call('exists', KEYS[2]) > 0 then return 0 end "
    "redis.call('set', KEYS[1], ARGV[1], 'EX', 7200) redis.call('set', KEYS[2], ARGV[1], 'EX', 7200) return 1"
)


@dataclass
class Stat:
    """Repetitions of one figure: the median, with min and max."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 3),
            "min": round(min(self.values), 3),
            "max": round(max(self.values), 3),
            "values": [round(v, 3) for v in self.values],
        }


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))] if ordered else float("nan")


def amqp_url(vhost: str) -> str:
    return f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{vhost}"


@contextmanager
def vhost(prefix: str) -> Iterator[str]:
    """A fresh RabbitMQ vhost, deleted afterwards."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:6]}"
    httpx.put(f"{MGMT_URL}/api/vhosts/{name}", auth=MGMT_AUTH, timeout=10).raise_for_status()
    httpx.put(
        f"{MGMT_URL}/api/permissions/{name}/{MGMT_AUTH[0]}",
        auth=MGMT_AUTH,
        timeout=10,
        json={"configure": ".*", "write": ".*", "read": ".*"},
    ).raise_for_status()
    try:
        yield name
    finally:
        httpx.delete(f"{MGMT_URL}/api/vhosts/{name}", auth=MGMT_AUTH, timeout=30)


@contextmanager
def redis_db() -> Iterator[int]:
    """A Redis db nobody else is using (claimed like a test session claims one), emptied first, flushed afterwards."""
    mine = f"bench-{uuid.uuid4().hex[:6]} {socket.gethostname()} {os.getpid()}"
    for db in range(15, 0, -1):
        with redis.Redis(host=REDIS_HOST, db=db) as client:
            if client.eval(_CLAIM, 2, *CLAIM_KEYS, mine):
                # What a run killed before its clean-up left behind must not count as this run's.
                leftovers = [key for key in client.scan_iter(count=1000) if key.decode() not in CLAIM_KEYS]
                if leftovers:
                    client.delete(*leftovers)
                break
    else:
        raise RuntimeError("No free Redis db for the benchmark (every db 1-15 is claimed).")
    try:
        yield db
    finally:
        with redis.Redis(host=REDIS_HOST, db=db) as client:
            client.flushdb()


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:6379/{db}"


#: How long results may trail a drained queue before a run counts as failed (results follow within a second).
RESULTS_TIMEOUT_S = 60.0


def wait_results(db: int, expected: int) -> float:
    """Wait until a peer's own Redis db holds `expected` results (one key each, besides the claims)."""
    with redis.Redis(host=REDIS_HOST, db=db) as client:
        return wait_until(
            lambda: client.dbsize() - len(CLAIM_KEYS) >= expected,
            RESULTS_TIMEOUT_S,
            what=f"{expected} results in db {db}",
        )


def wait_result_keys(db: int, keys: list[str]) -> float:
    """Wait until every key of `keys` exists in Redis db `db` (asked in one EXISTS per poll)."""
    with redis.Redis(host=REDIS_HOST, db=db) as client:
        return wait_until(
            lambda: client.exists(*keys) == len(keys), RESULTS_TIMEOUT_S, what=f"{len(keys)} results in db {db}"
        )


def stored_answers(db: int, kind: str, keys: list[str] | None = None) -> int:
    """How many results in Redis db `db` are a successful probe's answer (`"pong": true`): Celery's result
    documents (`kind` "celery", status SUCCESS) or Dramatiq's stored return values ("dramatiq"); `keys`, or every
    key but the claims."""
    with redis.Redis(host=REDIS_HOST, db=db) as client:
        if keys is None:
            keys = [k.decode() for k in client.scan_iter(count=1000) if k.decode() not in CLAIM_KEYS]
        if kind == "dramatiq":
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.lindex(key, 0)
            values = pipe.execute()
        else:
            values = client.mget(keys) if keys else []
    answers = [json.loads(value) for value in values if value]
    if kind == "celery":
        answers = [doc.get("result") for doc in answers if doc.get("status") == "SUCCESS"]
    return sum(1 for answer in answers if isinstance(answer, dict) and answer.get("pong") is True)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "") -> float:
    """Poll until predicate() is true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def queue_ready(vhost_name: str, queue: str) -> int:
    """Messages ready in a queue, from a passive declare (exact, unlike the management statistics)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost_name)))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def wait_drained(vhost_name: str, queue: str, timeout: float) -> float:
    """Wait until a queue has no ready message; keeps one connection open so polling stays cheap."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost_name)))
    try:
        channel = connection.channel()
        return wait_until(
            lambda: channel.queue_declare(queue, passive=True).method.message_count == 0,
            timeout,
            what=f"{queue} to drain",
        )
    finally:
        connection.close()


class Process:
    """A benchmark subprocess in its own session, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            # A restarted process appends to its predecessor's log: only what it writes itself is its own (a
            # stale "ready." once let a worker's boot count as part of an end-to-end run).
            self._log_start = log.tell()
            self.popen = subprocess.Popen(
                cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        """What this process has written to its log."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(seen, timeout, interval=0.1, what=f"{self.name}: {text!r}")

    def rss_kib(self) -> int:
        """Resident memory of the process and its children."""
        pids = [self.popen.pid, *_children(self.popen.pid)]
        return sum(_rss(pid) for pid in pids)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of `pids` still running, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    spent = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        spent[pid] = (int(fields[11]) + int(fields[12])) / tick
    return spent


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two `cpu_of` readings by the processes running at the second (one started in
    between counts whole; one gone by then is left out, rather than read as negative time)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def pgrep(*args: str) -> list[int]:
    """The pids `pgrep` finds with `args`."""
    return [int(p) for p in subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()]


def python() -> str:
    """The interpreter running the benchmark (its venv has every peer installed)."""
    return sys.executable
