"""Processes a fault test owns: its own `redis-server` on a free port (killed and restarted at will) and an API
(`uvicorn app.main:app`) pointed at it. The shared Redis on :6379 is never touched.

tests/api/conftest.py offers the fixtures to the API tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ROOT, VAR_DIR, join


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A `redis-server` of the test's own: persistence as asked, on a fixed port across restarts."""

    def __init__(self, *, appendonly: bool) -> None:
        self.port = free_port()
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="own-redis-", dir=VAR_DIR))
        self.log_path = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it answers PING."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        join(answers, timeout=15, what=f"redis-server on :{self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would (nothing is saved on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def remove(self) -> None:
        self.resume()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[Callable[..., OwnRedis]]:
    """Factory: start a redis-server of the test's own (`appendonly=False` by default); all removed afterwards."""
    made: list[OwnRedis] = []

    def start(*, appendonly: bool = False) -> OwnRedis:
        server = OwnRedis(appendonly=appendonly)
        made.append(server)
        server.start()
        return server

    yield start
    for server in made:
        server.remove()


class ApiProcess:
    """`uvicorn app.main:app` as a real process with some settings of its own (e.g. its Redis)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = VAR_DIR / f"api-{uuid.uuid4().hex[:6]}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(self.port)],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the API exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.base}/api/v1/tasks/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            join(up, timeout=60, what="the API to listen")
        except pytest.fail.Exception:
            pytest.fail(f"the API did not listen within 60 s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def api_process() -> Iterator[Callable[..., ApiProcess]]:
    """Factory: start an API process with extra environment (waits until it listens unless `wait=False`)."""
    made: list[ApiProcess] = []

    def start(env: dict[str, str], *, wait: bool = True) -> ApiProcess:
        process = ApiProcess(env)
        made.append(process)
        if wait:
            process.wait_listening()
        return process

    yield start
    for process in made:
        process.stop()
