"""Run history: fold task events (journaled by the workers, shaped like Celery's) into `task_runs`; read it back."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, any_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from app.constants import TERMINAL_STATES, TaskState
from app.db import sql_text, utcnow
from app.runs.models import TaskAttempt, TaskRun

#: Longest error text kept per run (the full traceback lives in the dead-letter record).
ERROR_MAX_CHARS = 2000
#: What the run's columns hold (a task id, a task or worker name): the journal's values arrive from any producer.
TASK_ID_MAX_CHARS = TaskRun.task_id.type.length
NAME_MAX_CHARS = TaskRun.name.type.length
TIER_MAX_CHARS = TaskRun.tier.type.length
TRIGGERED_BY_MAX_CHARS = TaskRun.triggered_by.type.length
#: Largest count an SQL integer column takes.
_INT_MAX = 2**31 - 1
#: Latest moment a Python datetime holds (9999-12-31).
_TIMESTAMP_MAX = 253402300799.0

_EVENT_STATES = {
    "task-received": TaskState.RECEIVED,
    "task-started": TaskState.STARTED,
    "task-succeeded": TaskState.SUCCESS,
    "task-failed": TaskState.FAILURE,
    "task-retried": TaskState.RETRY,
    "task-revoked": TaskState.REVOKED,
    "task-rejected": TaskState.FAILURE,
}

_COLUMNS = [c.name for c in TaskRun.__table__.columns]


def _row_dict(run: TaskRun | None, task_id: str) -> dict[str, Any]:
    if run is None:
        now = utcnow()
        row = dict.fromkeys(_COLUMNS)
        row.update(task_id=task_id, name="", state=TaskState.PENDING.value, attempts=0, created_at=now, updated_at=now)
        return row
    return {c: getattr(run, c) for c in _COLUMNS}


def apply_event(row: dict[str, Any], event: Mapping[str, Any]) -> None:
    """Fold one Celery task event into a row dict; an event older than the row's last one changes no state."""
    kind = event.get("type", "")
    state = _EVENT_STATES.get(kind)
    if state is None:
        return
    at = datetime.fromtimestamp(_timestamp(event.get("timestamp")), UTC)
    row["updated_at"] = utcnow()
    if kind in ("task-received", "task-started") and event.get("name"):
        # The journal's start entry carries what Celery's task-received did: the name and the attempt.
        row["name"] = sql_text(str(event["name"]), NAME_MAX_CHARS)
        row["attempts"] = max(row["attempts"] or 0, min(_count(event.get("retries")) + 1, _INT_MAX))
    if kind == "task-received":
        row["received_at"] = at
    if event.get("hostname"):
        row["worker"] = sql_text(str(event["hostname"]), NAME_MAX_CHARS)
    if kind == "task-started":
        row["started_at"] = at
    if kind in ("task-succeeded", "task-failed", "task-revoked", "task-rejected"):
        row["finished_at"] = at
    if kind == "task-succeeded":
        row["runtime_s"] = _number(event.get("runtime"))
        row["error"] = None
    if kind in ("task-failed", "task-retried") and event.get("exception"):
        row["error"] = sql_text(str(event["exception"]), ERROR_MAX_CHARS)
    last = row.get("event_at")
    # A success after a revoke is a run the revoke did not stop (it was running, or had just finished when the
    # history had not heard of it yet): the outcome is the truth. Anything else leaves a revoked run revoked.
    outran_revoke = kind == "task-succeeded" and row["state"] == TaskState.REVOKED.value
    if not outran_revoke and (row["state"] == TaskState.REVOKED.value or (last is not None and at < last)):
        return
    row["state"] = state.value
    row["event_at"] = at if last is None else max(at, last)


def record_events(
    *, session: Session, events: Iterable[Mapping[str, Any]], meta: Mapping[str, Mapping[str, str]] | None = None
) -> int:
    """Upsert the runs touched by `events` in one statement; `meta` gives tier/triggered_by per task id."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        if event.get("uuid") and event.get("type", "") in _EVENT_STATES:
            # (an id from outside, cut to its column: a longer one refused the whole batch, and the recorder
            # retried it forever)
            by_task.setdefault(sql_text(str(event["uuid"]), TASK_ID_MAX_CHARS), []).append(event)
    if not by_task:
        return 0
    attempt_rows: list[dict[str, Any]] = []
    existing = _known_runs(session, list(by_task))
    rows = []
    for task_id, task_events in by_task.items():
        row = _row_dict(existing.get(task_id), task_id)
        for event in sorted(task_events, key=lambda e: _timestamp(e.get("timestamp"))):
            apply_event(row, event)
            if event.get("type") in ("task-retried", "task-failed"):
                attempt_rows.append(_attempt(task_id, row["attempts"], event))
        extra = (meta or {}).get(task_id) or {}
        if task_id not in existing:
            first = min(_timestamp(e.get("timestamp")) for e in task_events)
            row["created_at"] = datetime.fromtimestamp(_timestamp(extra.get("dispatched_at"), first), UTC)
        # (the meta comes from the message's headers, which any producer writes: a count, time or text no column
        # takes refused the whole batch, and the recorder retried it forever, recording nothing after it)
        row["tier"] = row["tier"] or _text(extra.get("tier"), TIER_MAX_CHARS)
        row["triggered_by"] = row["triggered_by"] or _text(extra.get("triggered_by"), TRIGGERED_BY_MAX_CHARS)
        row["name"] = row["name"] or _text(extra.get("name"), NAME_MAX_CHARS) or ""
        rows.append(row)
    _upsert(session, rows)
    if attempt_rows:
        session.execute(insert(TaskAttempt), attempt_rows)
    return len(rows)


def _count(value: Any) -> int:
    """A retry count from a journal entry (the message's `retries` header, which any producer writes): 0 unless
    it is a whole number an SQL integer column takes."""
    try:
        count = int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return count if 0 <= count <= _INT_MAX else 0


def _number(value: Any) -> float | None:
    """A finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _timestamp(value: Any, default: float = 0.0) -> float:
    """A Unix time a datetime holds, else `default` (a header may say anything: "garbage", 1e308, -1)."""
    number = _number(value)
    return number if number is not None and 0 <= number <= _TIMESTAMP_MAX else default


def _text(value: Any, limit: int) -> str | None:
    """Text from a header as its column holds it, or None."""
    return sql_text(str(value), limit) if value is not None and value != "" else None


def _attempt(task_id: str, attempt: int, event: Mapping[str, Any]) -> dict[str, Any]:
    traceback = event.get("traceback")
    return {
        "task_id": task_id,
        "attempt": max(attempt, 1),
        "outcome": "retried" if event.get("type") == "task-retried" else "failed",
        "error": sql_text(str(event.get("exception") or ""), ERROR_MAX_CHARS) or None,
        "traceback": sql_text(str(traceback)[-8000:]) if traceback else None,
        "worker": sql_text(str(event["hostname"]), NAME_MAX_CHARS) if event.get("hostname") else None,
        "at": datetime.fromtimestamp(_timestamp(event.get("timestamp")), UTC),
    }


def attempts(*, session: Session, task_id: str) -> list[TaskAttempt]:
    """Every failed attempt of a task, in order."""
    return list(
        session.scalars(
            select(TaskAttempt).where(TaskAttempt.task_id == task_id).order_by(TaskAttempt.at, TaskAttempt.id)
        )
    )


def _known_runs(session: Session, task_ids: list[str]) -> dict[str, TaskRun]:
    """The runs already recorded among `task_ids`, by id.

    On PostgreSQL the ids go as one array parameter (`= ANY`): an IN list of a batch's ids was a statement of a
    thousand placeholders, compiled and parsed per batch. And the batch's transaction is planned for its own
    parameters (`force_custom_plan`): the recorder's connection lives for days, psycopg prepares a statement after
    its fifth run, and PostgreSQL then settled on a generic plan made while `task_runs` was small, a sequential
    scan comparing every row with every id of the array (a parameter cannot be hashed), so a batch's lookup cost
    grew with the whole history (0.6 s a batch at 14,000 runs). Planned with the array as a constant, it is an
    index scan on a large table and a hashed comparison on a small one, for well under a millisecond of planning.
    """
    if _dialect(session) == "postgresql":
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        statement = select(TaskRun).where(TaskRun.task_id == any_(bindparam("ids", task_ids, type_=ARRAY(String(64)))))
    else:
        statement = select(TaskRun).where(TaskRun.task_id.in_(task_ids))
    return {run.task_id: run for run in session.scalars(statement)}


def _upsert(session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO UPDATE, never overwriting a REVOKED row but with a success (the admin's word is
    final, unless the run outran it).

    On PostgreSQL the batch is copied (binary COPY) into a temporary staging table, then upserted from it in one
    statement: executed once per row, the upsert was most of the recorder's CPU per run, and a statement apiece
    for PostgreSQL. Elsewhere (SQLite), one cached statement executed with the list of rows."""
    if _dialect(session) != "postgresql":
        session.execute(_upsert_statement("sqlite"), rows)
        return
    connection = session.connection()
    # Temporary: one per database connection, made by its first batch. Asked for every batch, because a batch
    # whose transaction rolled back took the table's creation with it.
    connection.execute(CreateTable(_STAGING, if_not_exists=True))
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]  # psycopg's
        cursor.execute(f"DELETE FROM {_STAGING.name}")  # (emptied at every commit; this covers a second batch)
        with cursor.copy(_COPY_SQL) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row([row[c] for c in _COLUMNS])
    session.execute(_upsert_statement("postgresql"))


def _staging_table() -> Table:
    """TEMPORARY, emptied at each commit: a PostgreSQL connection's batch of rows on its way to `task_runs`."""
    columns = [Column(c.name, c.type) for c in TaskRun.__table__.columns]
    return Table("task_runs_batch", MetaData(), *columns, prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS")


_STAGING = _staging_table()
_COPY_SQL = f"COPY {_STAGING.name} ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
#: PostgreSQL's binary type of each column, by its Python type (varchar's binary form is text's).
_COPY_TYPES = [
    {str: "text", int: "int4", float: "float8", datetime: "timestamptz"}[getattr(c.type, "impl", c.type).python_type]
    for c in _STAGING.columns
]


def _dialect(session: Session) -> str:
    return str(session.get_bind().dialect.name)


@lru_cache
def _upsert_statement(dialect: str) -> Any:
    """One statement per dialect, built once (SQLAlchemy caches its compiled form). On PostgreSQL it reads the
    staging table; on SQLite it is executed with a list of rows. (A multi-VALUES statement built per batch
    spent about half the recorder's time compiling; one over unnested column arrays cost the recorder more than
    a row at a time, as psycopg quotes each element of a text-format array in Python.)"""
    table: Table = TaskRun.__table__  # type: ignore[assignment]  # declared tables are Tables
    stmt: Any
    if dialect == "postgresql":
        source = select(*(_STAGING.c[c] for c in _COLUMNS))
        stmt = postgresql.insert(table).from_select(_COLUMNS, source)
    else:
        stmt = sqlite.insert(table)
    updatable = {c: getattr(stmt.excluded, c) for c in _COLUMNS if c not in ("task_id", "created_at")}
    # (but a success: a run the revoke did not stop, `apply_event`)
    kept = (table.c.state != TaskState.REVOKED.value) | (stmt.excluded.state == TaskState.SUCCESS.value)
    return stmt.on_conflict_do_update(index_elements=[table.c.task_id], set_=updatable, where=kept)


def _add_finished(
    session: Session,
    task_id: str,
    name: str | None,
    state: TaskState,
    error: str | None,
    now: datetime,
    meta: Mapping[str, str] | None = None,
) -> None:
    """A run the history has not seen yet, recorded as already finished in `state` (no attempt of it ran here);
    `meta` is what its publisher wrote (tier, triggered_by, dispatched_at), so the run stays attributed."""
    meta = meta or {}
    dispatched_at = meta.get("dispatched_at")
    session.add(
        TaskRun(
            task_id=task_id,
            name=name or meta.get("name") or "",
            tier=meta.get("tier") or None,
            triggered_by=meta.get("triggered_by") or None,
            state=state.value,
            attempts=0,
            error=error[:2000] if error else None,
            created_at=datetime.fromtimestamp(float(dispatched_at), UTC) if dispatched_at else now,
            finished_at=now,
            event_at=now,
        )
    )


def mark_revoked(
    *,
    session: Session,
    task_id: str,
    name: str | None,
    revoked_by: str | None,
    meta: Mapping[str, str] | None = None,
) -> None:
    """Record a revocation in the history (state REVOKED wins over any later event but a success: a run the revoke
    did not stop); `meta`: the publisher's."""
    now = utcnow()
    run = session.get(TaskRun, task_id)
    if run is None:
        _add_finished(
            session, task_id, name, TaskState.REVOKED, f"revoked by {revoked_by}" if revoked_by else None, now, meta
        )
    elif run.state not in TERMINAL_STATES:
        run.state = TaskState.REVOKED
        run.finished_at = now
        run.event_at = now
    session.flush()


def mark_dead_lettered(*, session: Session, task_id: str, name: str | None, error: str) -> None:
    """Record that a task's message ended in the dead-letter store (`error`: its reason, and the error if any)."""
    now = utcnow()
    run = session.get(TaskRun, task_id)
    if run is None:
        _add_finished(session, task_id, name, TaskState.DEAD_LETTERED, error, now)
    else:
        run.state = TaskState.DEAD_LETTERED
        run.error = error[:2000]
        run.event_at = max(run.event_at or now, now)


def mark_requeued(*, session: Session, task_id: str, at: datetime | None = None) -> None:
    """Record that a task was published again (a dead letter replayed) at `at`, a time taken before the publish:
    pending, its last error cleared, unless the history already holds a later event (the replayed run may start,
    fail and be recorded before the replay's own transaction commits: marking it PENDING then, as of the commit,
    hid that outcome for good, and its status read PENDING for ever)."""
    at = at or utcnow()
    session.flush()
    session.execute(
        update(TaskRun)
        .where(TaskRun.task_id == task_id, (TaskRun.event_at.is_(None)) | (TaskRun.event_at < at))
        .values(state=TaskState.PENDING, event_at=at, error=None)
        .execution_options(synchronize_session=False)
    )
    run = session.get(TaskRun, task_id)
    if run is not None:
        session.refresh(run)


def get(*, session: Session, task_id: str) -> TaskRun | None:
    """One run by task id."""
    return session.get(TaskRun, task_id)


@dataclass(frozen=True)
class RunFilter:
    """Filters for `list_runs`; None means any."""

    #: Any of these states (the overview's "finished" tile counts three); empty means any.
    states: tuple[TaskState, ...] = ()
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    triggered_by: str | None = None
    #: Keyset paging: only runs after this (created_at, task_id) in the listing's order (newest first), so a page
    #: deep in a long history costs what the first one does (an offset walks every row before it).
    after: tuple[datetime, str] | None = None


def list_runs(*, session: Session, filters: RunFilter, limit: int, offset: int) -> tuple[list[TaskRun], int]:
    """A page of runs, newest first, and the total that match (the filter's, whatever page `after` asks for)."""
    query = select(TaskRun)
    if filters.states:
        query = query.where(TaskRun.state.in_([s.value for s in filters.states]))
    if filters.name:
        query = query.where(TaskRun.name == filters.name)
    if filters.since is not None:
        query = query.where(TaskRun.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(TaskRun.created_at < filters.until)
    if filters.triggered_by:
        query = query.where(TaskRun.triggered_by == filters.triggered_by)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if filters.after is not None:
        created, task_id = filters.after
        query = query.where(
            (TaskRun.created_at < created) | ((TaskRun.created_at == created) & (TaskRun.task_id > task_id))
        )
    page = session.scalars(query.order_by(TaskRun.created_at.desc(), TaskRun.task_id).limit(limit).offset(offset))
    return list(page), total


def counts_by_state(*, session: Session, since: datetime) -> dict[str, int]:
    """How many runs were created since `since`, by state."""
    rows = session.execute(
        select(TaskRun.state, func.count()).where(TaskRun.created_at >= since).group_by(TaskRun.state)
    )
    return {str(state): int(count) for state, count in rows}


#: Rows one prune transaction deletes at most (of runs, and of attempts). A backlog (the first prune of a busy
#: history, a shortened HISTORY_RETENTION_DAYS) then goes in many short transactions, each far inside the task's
#: time limit, instead of one DELETE that the limit rolled back every hour, so the history never shrank.
PRUNE_BATCH_SIZE = 10_000


def prune(*, session: Session, older_than_days: int, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete one batch of history older than `older_than_days`: finished runs created before the cutoff with
    their failed attempts, and failed attempts recorded before it (those of runs pruned before attempts were pruned
    with them). Returns the rows deleted; call it again, in a new transaction, until it returns 0."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    finished = [s.value for s in TERMINAL_STATES]
    run_ids = list(
        session.scalars(
            select(TaskRun.task_id)
            .where(TaskRun.created_at < cutoff, TaskRun.state.in_(finished))
            .order_by(TaskRun.created_at)
            .limit(batch_size)
        )
    )
    deleted = 0
    if run_ids:
        attempts = session.execute(delete(TaskAttempt).where(TaskAttempt.task_id.in_(run_ids)))
        runs = session.execute(delete(TaskRun).where(TaskRun.task_id.in_(run_ids)))
        deleted += int(attempts.rowcount or 0) + int(runs.rowcount or 0)  # type: ignore[attr-defined]
    older = list(session.scalars(select(TaskAttempt.id).where(TaskAttempt.at < cutoff).limit(batch_size)))
    if older:
        result = session.execute(delete(TaskAttempt).where(TaskAttempt.id.in_(older)))
        deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return deleted
