"""Archival: old entries move to compressed JSON Lines files with a SHA-256 manifest; a rerun after a crash
between writing the file and deleting the rows loses and duplicates nothing; the chain verifies across it."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import timedelta

from sqlalchemy import func, select

from app.audit import archive
from app.audit import service as audit_service
from app.audit.models import AuditArchive, AuditEvent
from app.config import get_settings
from app.db import session_scope, utcnow


def _record(n: int, tag: str) -> list[int]:
    with session_scope() as session:
        return [
            audit_service.record(session=session, actor="archiver-test", action=f"test.{tag}", target=f"n:{i}").id
            for i in range(n)
        ]


def _archived_ids() -> list[int]:
    settings = get_settings()
    ids: list[int] = []
    with session_scope() as session:
        for row in session.scalars(select(AuditArchive).order_by(AuditArchive.first_id)):
            ids += [int(r["id"]) for r in archive.read_file(settings.audit_archive_path / row.file_name)]
    return ids


def test_archival_rerun_after_a_crash_loses_and_duplicates_nothing_and_the_chain_still_verifies():
    settings = get_settings()
    # "Now" is past the retention, so every entry so far counts as old
    later = utcnow() + timedelta(days=settings.audit_retention_days + 1)
    before = _record(5, "before-crash")
    with session_scope() as session:
        all_before = set(session.scalars(select(AuditEvent.id)))
    # Given a run that wrote its file and manifest, then crashed before deleting the rows
    with session_scope() as session:
        crashed = archive.prepare(session=session, settings=settings, now=later)
    assert crashed is not None and crashed.last_id == max(all_before)
    # (and a half-written temporary file from another crash)
    (settings.audit_archive_path / "audit-junk.jsonl.gz.tmp").write_bytes(b"half")
    manifest_file = settings.audit_archive_path / (crashed.file_name + archive.MANIFEST_SUFFIX)
    assert (
        json.loads(manifest_file.read_text())["sha256"]
        == hashlib.sha256((settings.audit_archive_path / crashed.file_name).read_bytes()).hexdigest()
    )
    # And more entries arrived meanwhile
    after = _record(3, "after-crash")
    # When archival runs again
    result = archive.run(settings=settings, now=later)
    # Then the interrupted batch was finished as it was, and the new entries went to a second file
    assert result["files"] == 2
    ids = _archived_ids()
    assert len(ids) == len(set(ids)), "an entry was archived twice"
    assert set(before) | set(after) | all_before <= set(ids)
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(AuditEvent.id.in_(ids))) == 0
        first = session.scalar(select(AuditArchive).where(AuditArchive.file_name == crashed.file_name))
        assert first is not None and first.last_id == crashed.last_id
    # And a third run has nothing to do
    assert archive.run(settings=settings, now=later) == {"files": 0, "rows": 0}
    # And the chain verifies across the boundary: new entries continue from the archive's last hash
    _record(2, "after-archive")
    with session_scope() as session:
        assert audit_service.verify(session=session).ok
        full = archive.verify_all(session=session, settings=settings)
    assert full.ok and full.archives_checked >= 2 and full.checked >= len(ids) + 2


def test_a_tampered_archive_file_fails_the_full_verification():
    settings = get_settings()
    _record(2, "to-tamper")
    later = utcnow() + timedelta(days=settings.audit_retention_days + 1)
    archive.run(settings=settings, now=later)
    with session_scope() as session:
        newest = session.scalar(select(AuditArchive).order_by(AuditArchive.last_id.desc()).limit(1))
    assert newest is not None
    path = settings.audit_archive_path / newest.file_name
    original = path.read_bytes()
    lines = gzip.decompress(original).decode().splitlines()
    edited = json.loads(lines[0])
    edited["outcome"] = "failure"
    path.write_bytes(gzip.compress(("\n".join([json.dumps(edited), *lines[1:]]) + "\n").encode()))
    try:
        with session_scope() as session:
            result = archive.verify_all(session=session, settings=settings)
        assert not result.ok and "SHA-256" in (result.problem or "")
    finally:
        path.write_bytes(original)
    with session_scope() as session:
        assert archive.verify_all(session=session, settings=settings).ok
