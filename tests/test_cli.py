"""The operator CLI as a person runs it: a real subprocess against the session's database and broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.support.api import auth
from tests.support.processes import free_port
from tests.support.session import ROOT


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_create_api_key_prints_the_key_alone_once_and_the_key_authenticates(api):
    # When an admin key is created
    name = f"ops-{uuid.uuid4().hex[:6]}"
    done = _cli("create-api-key", "--name", name, "--role", "admin")
    # Then stdout is the key alone
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n" and key.startswith("ck_") and len(key) > 40
    # And it opens the admin endpoints
    assert api.get("/api/v1/tasks/queues", headers=auth((name, key))).status_code == 200
    # And only its hash is stored
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix FROM api_keys WHERE name = :n"), {"n": name}).one()
    assert key not in stored.key_hash and stored.prefix == key[:10]


def test_create_api_key_refuses_a_duplicate_name_and_an_unknown_role():
    name = f"dup-{uuid.uuid4().hex[:6]}"
    assert _cli("create-api-key", "--name", name, "--role", "client").returncode == 0
    again = _cli("create-api-key", "--name", name, "--role", "client")
    assert again.returncode == 1 and again.stdout == "" and "already exists" in again.stderr
    wrong = _cli("create-api-key", "--name", f"x-{name}", "--role", "root")
    assert wrong.returncode == 2 and "Unknown role" in wrong.stderr


def test_topology_verify_says_what_it_checked_on_the_declared_topology():
    from app.config import get_settings

    # When the session's declared topology is verified
    done = _cli("topology", "verify")
    # Then it exits 0 and says so, naming the vhost and what it looked at
    assert done.returncode == 0, done.stderr
    vhost = get_settings().broker_vhost
    assert f"Topology on vhost {vhost!r} is as declared" in done.stderr, done.stderr
    assert "'courier.dlx' bound to 'dead_letter' and 'dead_letter.archive'" in done.stderr
    assert "the 3 work queues (high, medium, low)" in done.stderr


def test_topology_verify_exits_one_naming_the_vhost_and_each_problem_on_a_bare_vhost():
    # Given a vhost Courier never declared anything on
    vhost = f"courier_bare_{uuid.uuid4().hex[:8]}"
    broker = os.environ["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/" + vhost
    # When it is verified
    done = _cli("topology", "verify", env={"CELERY_BROKER_URL": broker})
    # Then it exits 1, says the vhost does not match and lists what is missing
    assert done.returncode == 1
    assert f"Topology on vhost {vhost!r} does not match what Courier declares" in done.stderr, done.stderr
    assert "- dead-letter exchange 'courier.dlx' does not exist" in done.stderr


def test_health_exits_one_when_no_worker_runs(own_redis):
    # Given a Redis no worker has written a heartbeat to (the session's may hold one of an earlier module's worker)
    server = own_redis()
    # Then the CLI health check reports the workers down
    done = _cli("health", env={"CELERY_RESULT_BACKEND": server.url, "REDIS_URL": server.url})
    assert done.returncode == 1
    assert "workers" in done.stdout and "down" in done.stdout


def test_commands_meeting_a_dead_service_name_it_in_one_line_without_a_traceback():
    # Given each of the services a command needs, in turn, on a port nothing listens on
    dead = free_port()
    no_broker = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{dead}//"}
    no_db = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/x"}
    cases = [
        (no_broker, ("active",), "The message broker is unreachable"),
        (no_broker, ("scheduled",), "The message broker is unreachable"),
        (no_db, ("performance",), "The database is unreachable"),
        (no_db, ("list-api-keys",), "The database is unreachable"),
        (no_db, ("dead-letters", "list"), "The database is unreachable"),
        (
            {"REDIS_URL": f"redis://127.0.0.1:{dead}/0", "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{dead}/0"},
            ("task", str(uuid.uuid4())),
            "Redis is unreachable",
        ),
    ]
    for env, command, said in cases:
        # When an operator runs a command that needs it
        done = _cli(*command, env=env)
        # Then it exits 1 with one line naming the service, not a traceback
        assert done.returncode == 1, (command, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (command, done.stderr)


def test_status_during_an_outage_names_it_shows_what_still_answers_and_exits_1(worker):
    # Given a worker running (its heartbeat in this session's Redis), and a dead port
    dead = free_port()
    # When an operator asks for the status screen with the database unreachable
    done = _cli("status", env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/x", "COLUMNS": "200"})
    # Then it names the database in one line, still shows the queues and the running worker, and exits 1
    assert done.returncode == 1, done.stderr
    assert "The database is unreachable" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert "Queues" in done.stdout and "medium" in done.stdout
    assert worker.hostname in done.stdout
    # When Redis is unreachable too
    redis_dead = {"REDIS_URL": f"redis://127.0.0.1:{dead}/0", "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{dead}/0"}
    done = _cli("status", env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/x", **redis_dead})
    # Then the workers' part says so, and the queues still show
    assert done.returncode == 1, done.stderr
    assert "No workers: Redis is unreachable" in done.stdout and "Queues" in done.stdout


def test_revoke_with_the_broker_down_is_durable_and_warns_in_one_line():
    # Given a broker nobody answers on, When a task is revoked from the CLI
    done = _cli("revoke", str(uuid.uuid4()), env={"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"})
    # Then the revocation is recorded, and the failed broadcast is one warning line, not a traceback
    assert done.returncode == 0, done.stderr
    assert "revoked" in done.stdout
    assert "Broadcasting the revoke" in done.stderr and "Traceback" not in done.stderr


def test_provision_never_changes_the_password_of_an_existing_broker_user_unless_told_to():
    import httpx

    from tests.support.services import AMQP_HOST, MGMT_AUTH, MGMT_URL, VHOST, mgmt

    user = f"courier-probe-{uuid.uuid4().hex[:6]}"

    def as_user(password: str) -> dict[str, str]:
        return {
            "CELERY_BROKER_URL": f"amqp://{user}:{password}@{AMQP_HOST}:5672/{VHOST}",
            "RABBITMQ_ADMIN_USER": MGMT_AUTH[0],
            "RABBITMQ_ADMIN_PASSWORD": MGMT_AUTH[1],
        }

    def logs_in(password: str) -> bool:
        return httpx.get(f"{MGMT_URL}/api/whoami", auth=(user, password), timeout=10).status_code == 200

    try:
        # Given a broker user that provision created, with the password the running components use
        assert _cli("provision", env=as_user("first-password")).returncode == 0
        assert logs_in("first-password")
        # When provision runs with another RABBITMQ_PASSWORD (a typo in .env)
        done = _cli("provision", env=as_user("typo-password"))
        # Then it changes nothing and says why, in one line, and how to change it on purpose
        assert done.returncode == 1, done.stderr
        assert "has another password than RABBITMQ_PASSWORD" in done.stderr and "--reset-password" in done.stderr
        assert "typo-password" not in done.stderr
        assert logs_in("first-password") and not logs_in("typo-password")
        # When provision runs again with the same password, Then it goes through
        assert _cli("provision", env=as_user("first-password")).returncode == 0
        # When it is told to reset the password, Then the new one is RabbitMQ's
        assert _cli("provision", "--reset-password", env=as_user("second-password")).returncode == 0
        assert logs_in("second-password") and not logs_in("first-password")
    finally:
        mgmt("DELETE", f"/users/{user}")


def test_values_from_outside_reach_the_terminal_as_text_never_as_escape_sequences_or_markup():
    from app.db import session_scope
    from app.deadletters import service as store
    from tests.support.console import arrival

    # Given a dead letter whose task name and error carry terminal escapes (window title, clear screen), rich markup
    # (a hyperlink) and a right-to-left override: anyone with broker credentials picks a message's task name
    marker = uuid.uuid4().hex[:8]
    name = f"evil.{marker}\x1b]0;pwned\x07\x1b[2J[link=http://evil.example]click[/link]"
    with session_scope() as session:
        assert store.record(session=session, arrival=arrival(error="boom \x1b[31mred\u202eexe.txt", task_name=name))
    # When the operator lists the dead letters (a wide terminal, so that no cell is folded)
    done = _cli("dead-letters", "list", "--status", "all", "--limit", "500", env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    # Then the terminal gets no control character at all: each is shown as its escape
    assert not any(ord(char) < 32 and char != "\n" or char == "\u202e" for char in done.stdout), repr(done.stdout)
    assert rf"evil.{marker}\x1b]0;pwned\x07\x1b[2J" in done.stdout
    # And the markup is shown as written, not made a hyperlink
    assert "[link=http://evil.example]click[/link]" in done.stdout
    assert r"boom \x1b[31mred\u202eexe.txt" in done.stdout


def test_a_database_url_whose_scheme_names_no_database_is_one_sentence_with_the_fix() -> None:
    # Given a DATABASE_URL with its scheme misspelled
    env = {**os.environ, "DATABASE_URL": "postgressql://courier@127.0.0.1:5432/courier"}
    # When a command that reads the database runs
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "list-api-keys"], capture_output=True, text=True, env=env, timeout=60
    )
    # Then it exits 1 with one line that says what to write, and no traceback
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "DATABASE_URL names no database Courier can use (Can't load plugin: sqlalchemy.dialects:postgressql); "
        "write postgresql://USER@HOST:5432/NAME, or leave it empty for SQLite in var/."
    ]


def test_a_wrong_broker_password_is_named_as_such_not_as_an_unreachable_management_api() -> None:
    # Given a RabbitMQ that answers, and a RABBITMQ_PASSWORD it does not accept
    env = {**os.environ, "RABBITMQ_PASSWORD": "not-the-password-" + uuid.uuid4().hex[:6], "CELERY_BROKER_URL": ""}
    # When the queues are listed
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "queues", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    # Then the one line says the login was refused and how to fix it, not that the API is unreachable
    assert done.returncode == 1
    assert "RabbitMQ refused the login of RABBITMQ_USER with RABBITMQ_PASSWORD" in done.stderr
    assert "--reset-password" in done.stderr and "unreachable" not in done.stderr
