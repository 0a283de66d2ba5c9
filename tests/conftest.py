"""Test session wiring, fixtures only: each delegates to tests/support (tests/README.md says what lives where).

The session gets a RabbitMQ vhost, a Redis db and a PostgreSQL database of its own (tests/support/services.py);
importing this file touches none of them. `pytest_configure` sets the session's environment before collection,
ahead of any `app` module reading its settings (subprocesses inherit it); the session fixture `isolated_services`
creates the vhost and the database and removes everything the session made at the end.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import services
from tests.support.api import LIVE_PATH, ApiProcess, import_anyio_now, make_key
from tests.support.processes import OwnRedis
from tests.support.receiver import Receiver
from tests.support.workers import RecorderProcess, WorkerProcess, spawn_worker


def pytest_configure(config: pytest.Config) -> None:
    """Point Courier at this session's services (claiming its Redis db) before collection imports `app`.

    A developer's .env must not leak into the tests: Settings reads the process environment first, and everything
    that matters is set here.
    """
    os.environ.update(services.session_env())
    import_anyio_now()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (`rep_call`), so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session", autouse=True)
def isolated_services() -> Iterator[None]:
    """Create the vhost and the database, migrate, declare the topology; remove it all afterwards."""
    services.create_isolated()
    try:
        yield
    finally:
        services.remove_isolated()


@pytest.fixture
def start_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker on some queues; every worker it made is stopped at the end of the test (its log
    printed when the test failed)."""
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
    if made:
        # Stopping a worker SIGTERMs its pool children: a task still running there was retried through a delay
        # queue and reached the next test's worker a second later, taking its only pool process (a hanging probe
        # held it for its hard limit). Whatever the stopped workers left behind goes with them.
        services.purge_queues(*services.DELAY_QUEUES, *services.WORK_QUEUES)


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


@pytest.fixture
def admin_key() -> tuple[str, str]:
    """(name, key) of a fresh admin key."""
    return make_key("admin")


@pytest.fixture
def client_key() -> tuple[str, str]:
    """(name, key) of a fresh client key."""
    return make_key("client")


@pytest.fixture
def empty_queues() -> None:
    """Start from empty work, retry and dead-letter queues (for tests that count messages, or need a worker's
    only pool process free: a retry an earlier test left in a delay queue would take it a moment later)."""
    services.purge_queues(*services.DELAY_QUEUES, *services.WORK_QUEUES, services.DEAD_LETTER_QUEUE)


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


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory: start a local HTTP receiver (scripted answers, or a handler); every one is stopped after the test."""
    made: list[Receiver] = []

    def start(**kwargs: object) -> Receiver:
        server = Receiver(**kwargs).start()  # type: ignore[arg-type]
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()
