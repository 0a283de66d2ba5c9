"""The development default, SQLite: the migration chains existing entries, and two processes appending at once
do not fork the chain (SQLite's single writer serializes them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.session import ROOT

APPEND = """
from app.audit import service
from app.db import session_scope
for i in range(40):
    with session_scope() as session:
        service.record(session=session, actor="proc", action="test.sqlite", target=str(i))
"""

VERIFY = """
from sqlalchemy import func, select
from app.audit import service
from app.audit.models import AuditEvent
from app.db import session_scope
with session_scope() as session:
    result = service.verify(session=session)
    forks = session.execute(select(AuditEvent.prev_hash).group_by(AuditEvent.prev_hash).having(func.count() > 1)).all()
    print(result.ok, result.checked, len(forks))
"""


def test_sqlite_migrates_and_serializes_appends_from_two_processes(tmp_path: Path):
    env = {**os.environ, "DATABASE_URL": "", "VAR_DIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    migrated = run("-m", "alembic", "upgrade", "head")
    assert migrated.returncode == 0, migrated.stderr
    writers = [
        subprocess.Popen([sys.executable, "-c", APPEND], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    checked = run("-c", VERIFY)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == ["True", "80", "0"]
