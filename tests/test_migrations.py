"""The migrations and the models agree: `alembic check` finds nothing to generate on the session database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg

from tests.support.services import PG_ADMIN_DSN
from tests.support.session import ROOT


def test_the_models_and_the_migrations_have_not_drifted():
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr


def test_upgrading_encrypts_stored_webhook_secrets_and_downgrading_restores_them():
    from app import crypto

    database = f"courier_migration_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    env = {**os.environ, "DATABASE_URL": url}

    def alembic(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def stored(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        return tuple(conn.execute("SELECT secret, previous_secret FROM webhook_endpoints").fetchone() or ())

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        try:
            # Given an endpoint stored in clear by the revision before
            alembic("upgrade", "a7e1d2c30007")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO webhook_endpoints (url, event_types, enabled, owner, secret, previous_secret,"
                    " consecutive_failures, created_at, updated_at) VALUES ('http://example.test/hook', '[\"*\"]',"
                    " true, 'admin', 'whsec_current', 'whsec_previous', 0, now(), now())"
                )
                # When the database is upgraded, both secrets are encrypted in place
                alembic("upgrade", "head")
                secret, previous = stored(conn)
                assert "whsec_" not in secret + previous
                assert (crypto.decrypt(secret), crypto.decrypt(previous)) == ("whsec_current", "whsec_previous")
                # And a downgrade gives them back in clear
                alembic("downgrade", "a7e1d2c30007")
                assert stored(conn) == ("whsec_current", "whsec_previous")
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
