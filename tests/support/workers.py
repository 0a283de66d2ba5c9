"""Courier's background processes as tests run them: real `celery worker` subprocesses and the history recorder.

- `spawn_worker()` starts a worker in a session of its own, its output in VAR_DIR/<name>.log; `WorkerProcess`
  waits for it to be ready, stops it warmly or kills it as a crash would;
- `RecorderProcess` is `python -m app.recorder`, which a test may kill and restart.

tests/conftest.py offers them as fixtures: `start_worker` (a factory), `worker` (one per module), `recorder`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import stop_process_group
from tests.support.services import redis_client
from tests.support.session import ROOT, VAR_DIR, join


@dataclass
class WorkerProcess:
    """A real `celery worker` subprocess; its log is kept for assertions and failure reports."""

    name: str
    queues: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return f"{self.name}@test"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the worker's first heartbeat (written once its boot steps passed)."""
        key = f"courier:worker:{self.hostname}"
        client = redis_client()

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            return bool(client.exists(key)) and "ready." in self.log()

        join(ready, timeout=timeout, what=f"worker {self.name} to be ready")

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM), falling back to SIGKILL."""
        return stop_process_group(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as an OOM kill or a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def spawn_worker(name: str, queues: str, concurrency: int, env: dict[str, str]) -> WorkerProcess:
    """Start `celery worker` as a real subprocess in its own session; its output goes to VAR_DIR/<name>.log."""
    log_path = VAR_DIR / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "app.tasks",
        "worker",
        "-Q",
        queues,
        "-n",
        f"{name}@test",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    return WorkerProcess(name, queues, process, log_path, env)


class RecorderProcess:
    """The recorder (`python -m app.recorder`) as a real process that a test may kill and restart."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(VAR_DIR / "recorder.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.recorder"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: whatever it took and did not commit must come back (journal entries, dead letters)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
