"""Test session wiring: a RabbitMQ vhost, a Redis db and a PostgreSQL database of its own, real worker processes.

The environment is set here, at import, before any `app` module reads its settings; subprocesses (workers,
the recorder, a second API) inherit it. Everything the session creates is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from tests.support.services import LIVE_PATH, ApiProcess, OwnRedis, stop_process_group
from tests.support.session import ROOT, SESSION, VAR_DIR, join  # (tests import them from here too)

AMQP_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
MGMT_URL = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MGMT_AUTH = (os.environ.get("TEST_RABBITMQ_USER", "guest"), os.environ.get("TEST_RABBITMQ_PASSWORD", "guest"))
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
VHOST = f"courier_test_{SESSION}"
DATABASE = f"courier_test_{SESSION}"
CLAIM_KEY = "courier-test:claim"


#: Replaces a claim only while it still holds the value that was read (two sessions may find it stale at once).
_STEAL_CLAIM = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', 7200) end"
)


def _claim_is_stale(value: bytes | None) -> bool:
    """A claim left by a session on this host whose process is gone (killed before its teardown ran)."""
    parts = (value or b"").decode(errors="replace").split()
    if len(parts) != 3 or parts[1] != socket.gethostname():
        return False  # another host's, or an old-format claim: only its 2 h TTL ends it
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _claim_redis_db() -> int:
    """Claim a Redis db no other test session is using: a claim key (`<session> <host> <pid>`, 2 h TTL) marks
    it, and a claim whose process on this host has died is taken over rather than waited out."""
    mine = f"{SESSION} {socket.gethostname()} {os.getpid()}"
    for db in range(1, 16):
        with redis.Redis(host=REDIS_HOST, db=db) as client:
            if client.set(CLAIM_KEY, mine, nx=True, ex=7200):
                return db
            held = client.get(CLAIM_KEY)
            if _claim_is_stale(held) and client.eval(_STEAL_CLAIM, 1, CLAIM_KEY, held, mine):
                client.flushdb()
                client.set(CLAIM_KEY, mine, ex=7200)
                return db
    raise RuntimeError("Every Redis db 1-15 is claimed by another live test session.")


REDIS_DB = _claim_redis_db()

TEST_ENV = {
    "ENVIRONMENT": "test",
    "CELERY_BROKER_URL": f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{VHOST}",
    "CELERY_RESULT_BACKEND": f"redis://{REDIS_HOST}:6379/{REDIS_DB}",
    "REDIS_URL": "",
    "RABBITMQ_MANAGEMENT_URL": MGMT_URL,
    "DATABASE_URL": PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE}",
    "VAR_DIR": str(VAR_DIR),
    "CELERY_TASK_ALWAYS_EAGER": "false",
    "WORKER_HEARTBEAT_INTERVAL_S": "1",
    "HISTORY_FLUSH_INTERVAL_S": "0.2",
    "API_KEY_CACHE_S": "0",
    "PUBLISH_TIMEOUT_S": "3",
    # Retries fast enough to watch: 2 retries, 1 s backoff base, 2 s cap (delay queues of 1 and 2 s).
    "TASK_MAX_RETRIES": "2",
    "TASK_RETRY_BACKOFF_S": "1",
    "TASK_RETRY_BACKOFF_MAX_S": "2",
    "LOG_LEVEL": "INFO",
    # Audit and integrations (issue 5): local receivers are on loopback; webhook retries fast enough to watch.
    "EGRESS_ALLOW_LIST": "127.0.0.1",
    "WEBHOOK_RETRY_BASE_S": "1",
    "WEBHOOK_RETRY_MAX_S": "2",
}
os.environ.update(TEST_ENV)


def _import_anyio_now() -> None:
    """Resolve anyio's lazily imported names here, in the main thread.

    anyio ships a pytest plugin, so pytest's assertion rewriter imports every anyio module (with or without
    `-p no:anyio`), parsing its source. A module anyio first imports lazily inside the TestClient's thread (a
    FileResponse's `anyio.open_file`) was then parsed there, concurrently with the main thread, and CPython
    3.11.7 failed it twice in CI with "SystemError: AST constructor recursion depth mismatch": a 500 on a report
    download.
    """
    import warnings

    import anyio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when resolved
        for name in dir(anyio):
            if not name.startswith("_"):
                getattr(anyio, name)


_import_anyio_now()
# A developer's .env must not leak into the tests: Settings reads the process environment first, and
# everything that matters is set above.


def _mgmt(method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{MGMT_URL}/api{path}", auth=MGMT_AUTH, timeout=10, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def isolated_services() -> Iterator[None]:
    """Create the vhost and the database, migrate, declare the topology; remove it all afterwards."""
    assert _mgmt("PUT", f"/vhosts/{VHOST}").status_code in (201, 204)
    _mgmt("PUT", f"/permissions/{VHOST}/{MGMT_AUTH[0]}", json={"configure": ".*", "write": ".*", "read": ".*"})
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True)
    from app.config import get_settings
    from app.engine import topology

    topology.declare(get_settings())
    try:
        yield
    finally:
        from app.db import reset_engine

        reset_engine()
        _mgmt("DELETE", f"/vhosts/{VHOST}")
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        redis.Redis(host=REDIS_HOST, db=REDIS_DB).flushdb()
        shutil.rmtree(VAR_DIR, ignore_errors=True)


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
        client = redis.Redis(host=REDIS_HOST, db=REDIS_DB)

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


@pytest.fixture
def start_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker on some queues; every worker it made is stopped at the end of the test."""
    made: list[WorkerProcess] = []

    def start(
        queues: str = "high,medium,low",
        *,
        concurrency: int = 2,
        name: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        worker = spawn_worker(name or f"w{len(made)}-{uuid.uuid4().hex[:6]}", queues, concurrency, env or {})
        made.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in made:
        worker.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            sys.stderr.write(f"\n--- log of {worker.name} ---\n{worker.log()[-4000:]}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


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


@pytest.fixture(scope="session")
def recorder() -> Iterator[RecorderProcess]:
    """The recorder as a real process for the whole session."""
    handle = RecorderProcess()
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def worker(recorder: RecorderProcess) -> Iterator[WorkerProcess]:
    """One worker on every tier, shared by a test module (modules that steer workers themselves skip it)."""
    shared = spawn_worker(f"shared-{uuid.uuid4().hex[:6]}", "high,medium,low", 2, {})
    shared.wait_ready()
    yield shared
    shared.stop()


@pytest.fixture
def api() -> Iterator[Any]:
    """The FastAPI app in-process (real publish to the test vhost, real Redis and PostgreSQL)."""
    from fastapi.testclient import TestClient

    from app.main import app

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _make_key(role: str) -> tuple[str, str]:
    from app.access import service
    from app.access.models import Role
    from app.db import session_scope

    name = f"{role}-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        _, plain = service.create(session=session, name=name, role=Role(role))
    return name, plain


@pytest.fixture
def admin_key() -> tuple[str, str]:
    """(name, key) of a fresh admin key."""
    return _make_key("admin")


@pytest.fixture
def client_key() -> tuple[str, str]:
    """(name, key) of a fresh client key."""
    return _make_key("client")


def auth(key: tuple[str, str]) -> dict[str, str]:
    """The Authorization header for a (name, key) pair."""
    return {"Authorization": f"Bearer {key[1]}"}


def queue_depth(name: str) -> dict[str, int]:
    """Ready and unacked counts of a queue, read over AMQP (exact, unlike the management stats)."""
    from kombu import Connection

    from app.config import get_settings

    with Connection(get_settings().broker_url) as conn:
        _, ready, consumers = conn.default_channel.queue_declare(name, passive=True)
    return {"ready": ready, "consumers": consumers}


def redis_client() -> redis.Redis:
    """A client on the session's Redis db."""
    return redis.Redis(host=REDIS_HOST, db=REDIS_DB, decode_responses=True)


def heartbeat(hostname: str) -> dict[str, Any] | None:
    """A worker's heartbeat record, if fresh."""
    raw = redis_client().get(f"courier:worker:{hostname}")
    return json.loads(raw) if raw else None


@pytest.fixture
def empty_queues() -> None:
    """Start from empty work and dead-letter queues (for tests that count messages)."""
    from app.config import get_settings
    from app.rabbitmq import ManagementClient

    settings = get_settings()
    with ManagementClient.for_broker_user(settings) as client:
        for name in ("high", "medium", "low", "dead_letter"):
            client.purge(settings.broker_vhost, name)


def dispatch(api: Any, key: tuple[str, str], **body: Any) -> str:
    """POST the probe task as `key` and return its task id (asserting the 202)."""
    response = api.post("/api/v1/tasks/ping", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


@pytest.fixture
def own_redis() -> Iterator[Callable[..., OwnRedis]]:
    """Factory: start a redis-server of the test's own (`appendonly=False`, `extra_args=()` by default); all
    removed afterwards."""
    made: list[OwnRedis] = []

    def start(*, appendonly: bool = False, extra_args: Sequence[str] = ()) -> OwnRedis:
        server = OwnRedis(appendonly=appendonly, extra_args=extra_args)
        made.append(server)
        server.start()
        return server

    yield start
    for server in made:
        server.remove()


@pytest.fixture
def api_process() -> Iterator[Callable[..., ApiProcess]]:
    """Factory: start an API process with extra environment (waits until it listens unless `wait=False`); all
    stopped afterwards."""
    made: list[ApiProcess] = []

    def start(
        env: dict[str, str] | None = None,
        *,
        wait: bool = True,
        log_path: Path | None = None,
        ready_path: str = LIVE_PATH,
    ) -> ApiProcess:
        process = ApiProcess(env, log_path=log_path, ready_path=ready_path)
        made.append(process)
        if wait:
            process.wait_listening()
        return process

    yield start
    for process in made:
        process.stop()
