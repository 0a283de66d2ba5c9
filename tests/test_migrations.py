"""The migrations and the models agree: `alembic check` finds nothing to generate on the session database."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_models_and_the_migrations_have_not_drifted():
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr
