"""Health: every component up gives 200; a wrong broker URL gives 503, and so does a dispatch, promptly; the
database counts as up only with the schema this code needs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import psycopg
from sqlalchemy import create_engine, text

from app.health import check_database, shipped_migrations
from tests.support.api import ApiProcess, auth
from tests.support.processes import free_port
from tests.support.services import PG_ADMIN_DSN
from tests.support.session import ROOT, VAR_DIR


def test_health_is_200_with_every_component_up_and_needs_no_key(api, worker):
    response = api.get("/api/v1/tasks/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "up"
    assert set(body["components"]) == {"broker", "result_backend", "database", "workers"}
    assert all(
        c["status"] == "up" and c["latency_ms"] is not None for k, c in body["components"].items() if k != "workers"
    )
    assert "guest" not in response.text and "amqp://" not in response.text


def test_with_a_wrong_broker_url_health_is_503_and_a_dispatch_is_503_with_retry_after(admin_key):
    # Given an API process whose broker URL points at a port where nothing listens
    env = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/nowhere"}
    with ApiProcess(env, log_path=VAR_DIR / "api-broken.log", ready_path="/docs") as api:
        base = api.base
        api.wait_listening()
        # When health is asked, Then the broker is reported down and the answer is 503
        health = httpx.get(f"{base}/api/v1/tasks/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["components"]["broker"]["status"] == "down"
        # When a task is dispatched, Then it is refused with 503 and Retry-After within the client's timeout
        response = httpx.post(f"{base}/api/v1/tasks/ping", json={}, headers=auth(admin_key), timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["code"] == "unavailable"


def test_the_database_is_down_in_health_until_its_schema_is_this_codes_and_up_when_a_deploy_migrated_it_ahead():
    # Given a database of the test's own, empty
    name = f"courier_health_{uuid.uuid4().hex[:6]}"
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    head, _ = shipped_migrations()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:

            def migrate(revision: str) -> None:
                subprocess.run(
                    [sys.executable, "-m", "alembic", "upgrade", revision],
                    cwd=ROOT,
                    env={**os.environ, "DATABASE_URL": url},
                    check=True,
                    capture_output=True,
                )

            # When health checks it, Then the database is down, and the detail says how to fix it
            empty = check_database(engine)
            assert (empty.status, empty.detail) == ("down", "no Courier schema: run `alembic upgrade head`")
            # Given it migrated to the revision before this code's
            migrate("head-1")
            previous = engine.connect().execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            # Then it is still down, naming both revisions
            behind = check_database(engine)
            assert behind.status == "down"
            assert behind.detail == f"schema at {previous}, this code needs {head}: run `alembic upgrade head`"
            # Given it migrated to this code's head, Then it is up
            migrate("head")
            assert check_database(engine).status == "up" and check_database(engine).detail is None
            # Given a deploy that migrated it past this code (a revision this code does not know)
            with engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
            # Then it is up (this code's queries still work on it), and the detail says so
            ahead = check_database(engine)
            assert (ahead.status, ahead.detail) == ("up", f"schema at f00dfeedbeef, newer than this code's {head}")
        finally:
            engine.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_health_check_of_the_database_writes_no_log_line(caplog):
    import logging

    # Given every logger taking INFO
    with caplog.at_level(logging.INFO):
        # When the database's health is checked (the API does on every health request)
        found = check_database()
    # Then it is up and said nothing (Alembic's MigrationContext logged two INFO lines per check)
    assert found.status == "up"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
