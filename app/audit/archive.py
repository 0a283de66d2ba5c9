"""Archival: the oldest entries move to compressed JSON Lines files with a SHA-256 manifest.

Each batch goes through two steps, each safe to repeat:
1. `prepare`: write `<name>.jsonl.gz` (temporary file, fsync, rename), then its manifest the same way. The
   manifest on disk marks a complete file.
2. `commit`: check the file against its manifest and the rows, then delete the rows and register the archive
   in one transaction.
A crash between the steps leaves a manifest that is not registered; the next run finishes that batch first,
with the same rows, so nothing is lost or archived twice. The chain continues from the archive's last hash.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.audit import chain
from app.audit.models import GENESIS_HASH, AuditArchive, AuditEvent
from app.audit.service import ChainWalker, Verification, verify
from app.config import Settings
from app.db import session_scope, utcnow

logger = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What an archive file holds, and the SHA-256 of its bytes."""

    file_name: str
    sha256: str
    first_id: int
    last_id: int
    count: int
    first_prev_hash: str
    last_hash: str


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _oldest_batch(session: Session, cutoff: Any, size: int) -> list[dict[str, Any]]:
    """The oldest entries, in chain order, up to the first one not older than `cutoff`."""
    table = AuditEvent.__table__
    rows = session.execute(select(table).order_by(table.c.id).limit(size)).mappings()
    batch = []
    for row in rows:
        if row["at"] >= cutoff:
            break
        batch.append(chain.as_record(row))
    return batch


def prepare(*, session: Session, settings: Settings, now: datetime | None = None) -> Manifest | None:
    """Write the next batch's file and manifest; None when nothing is old enough (as of `now`)."""
    cutoff = (now or utcnow()) - timedelta(days=settings.audit_retention_days)
    batch = _oldest_batch(session, cutoff, settings.audit_archive_batch_size)
    if not batch:
        return None
    directory = settings.audit_archive_path
    directory.mkdir(parents=True, exist_ok=True)
    name = f"audit-{batch[0]['id']:012d}-{batch[-1]['id']:012d}.jsonl.gz"
    lines = b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in batch)
    data = gzip.compress(lines, mtime=0)
    manifest = Manifest(
        file_name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        first_id=int(batch[0]["id"]),
        last_id=int(batch[-1]["id"]),
        count=len(batch),
        first_prev_hash=str(batch[0]["prev_hash"]),
        last_hash=str(batch[-1]["hash"]),
    )
    _write_atomically(directory / name, data)
    _write_atomically(directory / (name + MANIFEST_SUFFIX), json.dumps(asdict(manifest), indent=2).encode())
    return manifest


def read_file(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of one archive file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def commit(*, session: Session, manifest: Manifest, settings: Settings) -> int:
    """Check the file against its manifest and the rows still in SQL, then delete the rows and register it.

    Returns the rows deleted. Raises ValueError when the file does not match (it is then left for a person).
    """
    path = settings.audit_archive_path / manifest.file_name
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ValueError(f"{path} does not match the SHA-256 of its manifest")
    archived = {int(r["id"]): r["hash"] for r in read_file(path)}
    table = AuditEvent.__table__
    query = select(table.c.id, table.c.hash).where(table.c.id.between(manifest.first_id, manifest.last_id))
    in_sql = {int(row[0]): str(row[1]) for row in session.execute(query)}
    if len(archived) != manifest.count or any(archived.get(i) != h for i, h in in_sql.items()):
        raise ValueError(f"{path} does not hold the rows it is about to replace")
    result = session.execute(delete(AuditEvent).where(AuditEvent.id.between(manifest.first_id, manifest.last_id)))
    deleted = getattr(result, "rowcount", 0)
    session.add(AuditArchive(**asdict(manifest)))
    session.flush()
    logger.info("Archived %d audit entries (%s..%s) to %s.", manifest.count, manifest.first_id, manifest.last_id, path)
    return int(deleted or 0)


def _unfinished(session: Session, settings: Settings) -> list[Manifest]:
    """Manifests on disk that are not registered: batches a crash interrupted between the two steps."""
    directory = settings.audit_archive_path
    if not directory.exists():
        return []
    registered = set(session.scalars(select(AuditArchive.file_name)))
    found = []
    for path in sorted(directory.glob("*" + MANIFEST_SUFFIX)):
        manifest = Manifest(**json.loads(path.read_text()))
        if manifest.file_name not in registered:
            found.append(manifest)
    return found


def run(*, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Finish interrupted batches, then archive every entry older than the retention (as of `now`)."""
    files = rows = 0
    with session_scope() as session:
        unfinished = _unfinished(session, settings)
    for manifest in unfinished:
        with session_scope() as session:
            still_there = session.scalar(
                select(func.count()).where(AuditEvent.id.between(manifest.first_id, manifest.last_id))
            )
            if still_there:
                rows += commit(session=session, manifest=manifest, settings=settings)
                files += 1
    while True:
        with session_scope() as session:
            batch = prepare(session=session, settings=settings, now=now)
        if batch is None:
            break
        with session_scope() as session:
            rows += commit(session=session, manifest=batch, settings=settings)
            files += 1
    return {"files": files, "rows": rows}


def verify_all(*, session: Session, settings: Settings) -> Verification:
    """Walk the whole chain: every archive file (checked against its SHA-256), then the entries in SQL."""
    walker = ChainWalker(GENESIS_HASH)
    archives = list(session.scalars(select(AuditArchive).order_by(AuditArchive.first_id)))
    for archive in archives:
        path = settings.audit_archive_path / archive.file_name
        problem = None
        if not path.exists():
            problem = f"archive {archive.file_name} is missing"
        elif hashlib.sha256(path.read_bytes()).hexdigest() != archive.sha256:
            problem = f"archive {archive.file_name} does not match its SHA-256"
        if problem is not None:
            return Verification(False, walker.checked, archive.first_id, problem, len(archives))
        for record in read_file(path):
            if not walker.check(record):
                assert walker.broken is not None
                broken_id, why = walker.broken
                return Verification(False, walker.checked, broken_id, f"{why} (in {archive.file_name})", len(archives))
    result = verify(session=session, walker=walker)
    return Verification(result.ok, result.checked, result.first_broken_id, result.problem, len(archives))
