"""A three-node RabbitMQ cluster and a Redis primary + replica + three Sentinels of the test's own, started by
`scripts/cluster.sh` in a folder under the session's scratch directory, and the load a failover test puts on
Courier through it.

- `Cluster`: start/stop the script's cluster, the Courier settings that point at it (`env`), provisioning, the
  node that leads a queue, kill -9 and restart of a RabbitMQ node or of the Redis primary;
- `Load`: threads that dispatch the probe task through a real API as fast as it answers, retrying a 503 with the
  same Idempotency-Key (as a client should), and record what each dispatch got and how long it took.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.sentinel

from tests.support.session import ROOT, VAR_DIR, join

SCRIPT = ROOT / "scripts" / "cluster.sh"
#: Passwords no log line may carry, in any form (the test greps for them and their percent-encoded forms).
BROKER_PASSWORD = "Clu5ter/br0ker@pw"
REDIS_PASSWORD = "Clu5ter-redis-pw"
VHOST = "courier_cluster"
USER = "courier_cluster"


@dataclass
class Cluster:
    """The script's cluster in `dir`; `start()` boots it (about 45 s), `stop()` kills and removes it."""

    dir: Path = field(default_factory=lambda: VAR_DIR / f"cluster-{uuid.uuid4().hex[:6]}")

    def script(self, *args: str, timeout: float = 240) -> str:
        """Run `cluster.sh` with `args`; its output (through files: the servers it starts outlive it and must not
        hold a pipe of ours open)."""
        env = {**os.environ, "CLUSTER_DIR": str(self.dir), "CLUSTER_REDIS_PASSWORD": REDIS_PASSWORD}
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        out, err = VAR_DIR / f"{self.dir.name}.out", VAR_DIR / f"{self.dir.name}.err"
        with open(out, "wb") as stdout, open(err, "ab") as stderr:
            code = subprocess.run(
                [str(SCRIPT), *args], cwd=ROOT, env=env, stdout=stdout, stderr=stderr, timeout=timeout
            ).returncode
        assert code == 0, f"cluster.sh {' '.join(args)} exited {code}: {err.read_text(errors='replace')[-3000:]}"
        return out.read_text()

    def start(self) -> None:
        self.script("start")
        self.settings = dict(
            line.split("=", 1) for line in self.script("env").splitlines() if "=" in line and not line.startswith("#")
        )

    def stop(self) -> None:
        self.script("stop")

    @property
    def env(self) -> dict[str, str]:
        """Courier's settings on this cluster: every node, quorum queues, Redis through the Sentinels."""
        return {
            **self.settings,
            "CELERY_BROKER_URL": "",
            "RABBITMQ_USER": USER,
            "RABBITMQ_PASSWORD": BROKER_PASSWORD,
            "RABBITMQ_VHOST": VHOST,
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/0",  # the db; the Sentinels name the server
            "REDIS_URL": "",
            "REDIS_PASSWORD": REDIS_PASSWORD,
            "PUBLISH_TIMEOUT_S": "3",
            "WORKER_PREFETCH_MULTIPLIER": "4",
        }

    def courier(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m app.cli ...` against the cluster."""
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def provision(self) -> None:
        """The vhost and user (`provision`), then the quorum topology (`topology declare`)."""
        for command in (("provision",), ("topology", "declare")):
            result = self.courier(*command)
            assert result.returncode == 0, result.stderr[-3000:]

    # --- RabbitMQ --------------------------------------------------------------------------------------------
    @property
    def management_urls(self) -> list[str]:
        return self.settings["RABBITMQ_MANAGEMENT_URLS"].split(",")

    def management(self, path: str) -> Any:
        """GET `path` (after /api) from the first node that answers, as guest."""
        for url in self.management_urls:
            try:
                response = httpx.get(f"{url}/api{path}", auth=("guest", "guest"), timeout=5)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return response.json()
        raise AssertionError(f"no management API answered {path}")

    def leader_of(self, queue: str) -> int:
        """The number (1-3) of the node that leads quorum queue `queue`."""
        leader = self.management(f"/queues/{VHOST}/{queue}")["leader"]
        return int(leader.split("@")[0].rsplit("-", 1)[1])

    def kill_node(self, number: int) -> None:
        self.script("kill-node", str(number))

    def start_node(self, number: int) -> None:
        self.script("start-node", str(number))

    # --- Redis -----------------------------------------------------------------------------------------------
    def sentinel(self) -> redis.sentinel.Sentinel:
        addresses = [
            (host, int(port)) for host, port in (s.split(":") for s in self.settings["REDIS_SENTINELS"].split(","))
        ]
        return redis.sentinel.Sentinel(addresses, socket_timeout=2)

    def primary_port(self) -> int | None:
        """The port of the primary the Sentinels name; None while they name none (mid-failover)."""
        try:
            return int(self.sentinel().discover_master(self.settings["REDIS_SENTINEL_MASTER"])[1])
        except redis.sentinel.MasterNotFoundError:
            return None

    def redis(self) -> redis.Redis:
        """A client of the current primary."""
        return self.sentinel().master_for(
            self.settings["REDIS_SENTINEL_MASTER"], password=REDIS_PASSWORD, decode_responses=True, socket_timeout=2
        )

    def redis_number(self, port: int) -> int:
        state = (self.dir / "state").read_text()
        return next(int(line[len("REDIS_PORT_")]) for line in state.splitlines() if line.endswith(f"={port}"))

    def kill_redis(self, number: int) -> None:
        self.script("kill-redis", str(number))

    def start_redis(self, number: int) -> None:
        self.script("start-redis", str(number))

    def logs(self) -> str:
        """Every log the cluster's servers wrote (RabbitMQ, Redis, Sentinel)."""
        return "\n".join(p.read_text(errors="replace") for p in self.dir.rglob("*.log") if p.is_file())


@dataclass
class Outcome:
    """What the load got: task ids accepted (202), 503 answers, 409s (a retry while the key's earlier try still
    held its claim), other answers >= 500, the longest dispatch
    (first try to 202, retries included) and when it started, and transport errors."""

    accepted: list[str] = field(default_factory=list)
    unavailable: int = 0
    conflicts: int = 0
    server_errors: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    transport_errors: int = 0


class Load:
    """`threads` clients dispatching the probe task through the API at `base` until `stop()`."""

    def __init__(self, base: str, headers: dict[str, str], threads: int = 2) -> None:
        self.base, self.headers = base, headers
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Outcome:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.outcome

    def accepted(self) -> int:
        with self._lock:
            return len(self.outcome.accepted)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                self._dispatch_one(client)

    def _dispatch_one(self, client: httpx.Client) -> None:
        """One dispatch with its own Idempotency-Key, retried on 503 or 409 (and on a dropped connection) until a
        202. Once the load stops, a dispatch the API refused is given up (it was not accepted); one whose answer
        was lost with its connection is retried to its end, so every accepted task is counted."""
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        began = time.monotonic()
        while True:
            try:
                response = client.post("/api/v1/tasks/ping", json={}, headers=headers)
            except httpx.HTTPError:
                with self._lock:
                    self.outcome.transport_errors += 1
                time.sleep(0.1)
                continue
            with self._lock:
                if response.status_code == 202:
                    self.outcome.accepted.append(response.json()["task_id"])
                    self.outcome.longest_s = max(self.outcome.longest_s, time.monotonic() - began)
                    return
                if response.status_code == 503:
                    self.outcome.unavailable += 1
                elif response.status_code == 409:  # the same key's earlier try still holds its claim: retry
                    self.outcome.conflicts += 1
                elif response.status_code >= 500:
                    self.outcome.server_errors.append(f"{response.status_code} {response.text[:200]}")
                else:
                    raise AssertionError(f"unexpected answer {response.status_code}: {response.text[:300]}")
            if self._stop.is_set():  # refused, so not accepted: the load is over, give this dispatch up
                return
            time.sleep(0.1)


def final_states(base: str, headers: dict[str, str], task_ids: list[str], timeout: float) -> dict[str, str]:
    """Each task's state once every one is final (SUCCESS, FAILURE, DEAD_LETTERED), or whatever it is at the
    timeout; read through the API (the result store through the Sentinels)."""
    states: dict[str, str] = {}
    pending = list(task_ids)
    final = ("SUCCESS", "FAILURE", "DEAD_LETTERED")

    def settled() -> bool:
        nonlocal pending
        with httpx.Client(base_url=base, timeout=10) as client:
            still = []
            for task_id in pending:
                try:
                    state = client.get(f"/api/v1/tasks/task/{task_id}", headers=headers).json().get("state", "?")
                except (httpx.HTTPError, ValueError):
                    state = "?"
                states[task_id] = state
                if state not in final:
                    still.append(task_id)
            pending = still
        return not pending

    try:
        join(settled, timeout=timeout, interval=1.0, what=f"{len(task_ids)} tasks to end")
    except BaseException:
        pass  # the caller asserts on the states, which name what is missing
    return states
