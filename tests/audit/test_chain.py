"""The audit chain: entries link by hash, appends from many processes never fork it, and tampering with one
row (an edit or a removal) is found by the verification, which names the first broken link."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, text

from app.access import service as access_service
from app.access.models import Role
from app.audit import service as audit_service
from app.audit.models import AuditEvent
from app.db import session_scope


def _record(n: int, actor: str = "tester") -> list[int]:
    ids = []
    with session_scope() as session:
        for i in range(n):
            ids.append(
                audit_service.record(
                    session=session,
                    actor=actor,
                    action="test.chain",
                    target=f"thing:{i}",
                    details={"i": i, "nested": {"a": [1, 2]}},
                ).id
            )
    return ids


def _verify() -> audit_service.Verification:
    with session_scope() as session:
        return audit_service.verify(session=session)


def test_each_entry_chains_to_the_one_before_and_the_chain_verifies():
    ids = _record(3)
    with session_scope() as session:
        rows = [session.get(AuditEvent, i) for i in ids]
        assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash  # type: ignore[union-attr]
        assert len({r.hash for r in rows}) == 3  # type: ignore[union-attr]
    assert _verify().ok


def test_an_edited_row_is_the_first_broken_link():
    # Given a healthy chain
    ids = _record(3)
    with session_scope() as session:
        original = session.execute(text("SELECT outcome FROM audit_events WHERE id = :id"), {"id": ids[1]}).scalar()
        # When someone edits the middle entry directly in SQL
        session.execute(text("UPDATE audit_events SET outcome = 'failure' WHERE id = :id"), {"id": ids[1]})
    try:
        # Then the verification names that entry
        result = _verify()
        assert not result.ok
        assert result.first_broken_id == ids[1]
        assert "altered" in (result.problem or "")
    finally:
        with session_scope() as session:
            session.execute(text("UPDATE audit_events SET outcome = :o WHERE id = :id"), {"o": original, "id": ids[1]})
    assert _verify().ok


def test_a_removed_row_breaks_the_link_of_the_next_one():
    ids = _record(3)
    table = AuditEvent.__table__
    with session_scope() as session:
        saved = dict(session.execute(select(table).where(table.c.id == ids[1])).mappings().one())
        session.execute(table.delete().where(table.c.id == ids[1]))
    try:
        result = _verify()
        assert not result.ok and result.first_broken_id == ids[2]
        assert "prev_hash" in (result.problem or "")
    finally:
        with session_scope() as session:
            session.execute(table.insert().values(**saved))
    assert _verify().ok


def test_concurrent_appends_do_not_fork_the_chain():
    # Given eight threads (each its own connection, as separate API processes would be) appending at once
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def append() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                _record(2, actor="concurrent")
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=append) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Then no two entries chain onto the same predecessor, and the chain verifies
    with session_scope() as session:
        duplicates = session.execute(
            select(AuditEvent.prev_hash, func.count()).group_by(AuditEvent.prev_hash).having(func.count() > 1)
        ).all()
        assert duplicates == []
        assert session.scalar(select(func.count()).where(AuditEvent.actor == "concurrent")) == 80
    assert _verify().ok


def test_api_keys_created_and_revoked_are_recorded_by_the_access_service():
    with session_scope() as session:
        access_service.create(session=session, name="audited-key", role=Role.client, actor="ops-person")
        access_service.revoke(session=session, name="audited-key")
    with session_scope() as session:
        events = audit_service.list_for_target(session=session, target="api_key:audited-key")
        assert [(e.action, e.actor) for e in events] == [("api_key.create", "ops-person"), ("api_key.revoke", "cli")]
        assert events[0].details == {"name": "audited-key", "role": "client", "prefix": events[0].details["prefix"]}
        assert "ck_" in str(events[0].details["prefix"])
