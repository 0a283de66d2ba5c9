"""Write to the audit trail (hash-chained, appends serialized), read it, and verify the chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app import context
from app.audit import chain
from app.audit.context import current_call
from app.audit.models import GENESIS_HASH, AuditArchive, AuditEvent
from app.db import utcnow

#: The PostgreSQL advisory-lock key that serializes appends to the chain ("audit" in ASCII).
CHAIN_LOCK_KEY = 0x6175646974


class Actor(Protocol):
    """Who acted, as the trail records them: a name and a role (app.access.schemas.Principal is one). Every domain
    writes the trail, so it names no other domain's type."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


def _lock_chain(session: Session) -> None:
    """Serialize appends until the caller's transaction ends, so two processes never chain onto one entry.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: a write statement takes the database's write lock
    (SQLite has one writer at a time), held to the end of the transaction like the advisory lock.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
    elif dialect == "sqlite":
        session.execute(text("UPDATE audit_events SET id = id WHERE 1 = 0"))


def chain_head(*, session: Session) -> str:
    """The hash the next entry chains onto: the newest entry's, else the newest archive's, else the genesis."""
    newest = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    if newest is not None:
        return newest
    archived = session.scalar(select(AuditArchive.last_hash).order_by(AuditArchive.last_id.desc()).limit(1))
    return archived or GENESIS_HASH


def record(
    *,
    session: Session,
    actor: Actor | str,
    action: str,
    target: str | None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
    request_id: str | None = None,
    client_address: str | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (so the action and its record commit together).

    The request id and client address default to the current HTTP call's. Appends are serialized until the
    caller commits, so keep the transaction short after recording.
    """
    name, role = (actor, None) if isinstance(actor, str) else (actor.name, str(actor.role))
    call = current_call.get()
    if call is not None:
        call.recorded = True
        client_address = client_address or call.client_address
    _lock_chain(session)
    event = AuditEvent(
        at=utcnow(),
        actor=name[:100],
        role=role,
        action=action[:100],
        target=target[:200] if target else target,
        reason=reason[:500] if reason else reason,
        details=chain.normalise_details(details),
        outcome=outcome,
        request_id=request_id or context.request_id.get(),
        client_address=client_address,
        prev_hash=chain_head(session=session),
    )
    event.hash = chain.compute_hash(chain.as_record(event))
    session.add(event)
    session.flush()
    return event


def list_for_target(*, session: Session, target: str) -> list[AuditEvent]:
    """Every event about one target, oldest first."""
    return list(session.scalars(select(AuditEvent).where(AuditEvent.target == target).order_by(AuditEvent.id)))


@dataclass(frozen=True)
class EventFilter:
    """Filters for listing events; None means any. `action` ending in `*` matches a prefix."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_events(*, session: Session, filters: EventFilter, limit: int, offset: int) -> tuple[list[AuditEvent], int]:
    """A page of events, newest first, and the total matching."""
    query = select(AuditEvent)
    if filters.actor is not None:
        query = query.where(AuditEvent.actor == filters.actor)
    if filters.action is not None:
        if filters.action.endswith("*"):
            query = query.where(AuditEvent.action.startswith(filters.action[:-1], autoescape=True))
        else:
            query = query.where(AuditEvent.action == filters.action)
    if filters.target is not None:
        query = query.where(AuditEvent.target == filters.target)
    if filters.outcome is not None:
        query = query.where(AuditEvent.outcome == filters.outcome)
    if filters.since is not None:
        query = query.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.at < filters.until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)))
    return page, total


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain: ok, how many entries were checked, and the first broken link."""

    ok: bool
    checked: int
    first_broken_id: int | None = None
    problem: str | None = None
    archives_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form (reports, the API)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_broken_id": self.first_broken_id,
            "problem": self.problem,
            "archives_checked": self.archives_checked,
        }


class ChainWalker:
    """Checks entries in chain order, one at a time; remembers the first broken link."""

    def __init__(self, expected_prev: str) -> None:
        self.expected_prev = expected_prev
        self.checked = 0
        self.broken: tuple[int, str] | None = None

    def check(self, record: dict[str, Any]) -> bool:
        """Check one entry (an `as_record` dict); False once a link is broken."""
        if self.broken is not None:
            return False
        self.checked += 1
        if record["prev_hash"] != self.expected_prev:
            self.broken = (int(record["id"]), "its prev_hash does not match the previous entry's hash")
            return False
        if chain.compute_hash(record) != record["hash"]:
            self.broken = (int(record["id"]), "its content does not match its hash (the entry was altered)")
            return False
        self.expected_prev = str(record["hash"])
        return True


def verify(*, session: Session, walker: ChainWalker | None = None, batch: int = 1000) -> Verification:
    """Walk the entries in SQL from the archive boundary (or the genesis) and report the first broken link.

    `walker` carries on from archives already checked (app.audit.archive.verify_all).
    """
    if walker is None:
        walker = ChainWalker(
            session.scalar(select(AuditArchive.last_hash).order_by(AuditArchive.last_id.desc()).limit(1))
            or GENESIS_HASH
        )
    last_id = 0
    while True:
        table = AuditEvent.__table__
        query = select(table).where(table.c.id > last_id).order_by(table.c.id).limit(batch)
        rows = list(session.execute(query).mappings())
        if not rows:
            break
        for row in rows:
            if not walker.check(chain.as_record(row)):
                assert walker.broken is not None
                return Verification(False, walker.checked, walker.broken[0], walker.broken[1])
        last_id = int(rows[-1]["id"])
    return Verification(True, walker.checked)
