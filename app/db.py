"""SQL plumbing: the declarative Base with a naming convention, the engine, and `session_scope()`."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, MetaData, TypeDecorator, create_engine, event, exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from app.config import get_settings

#: Errors that mean "the database is unreachable for now" (refused or dropped connections, a pool that timed out
#: waiting for one, and PostgreSQL's operational errors: a restart, a failover, a deadlock or serialization failure),
#: as opposed to a statement the database refuses (DataError, IntegrityError, ProgrammingError).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def sql_text(text: str, limit: int | None = None) -> str:
    """`text` as any SQL text column holds it: a NUL becomes the escape `\\x00` and an unpaired surrogate `\\udXXX`
    (PostgreSQL's text refuses the one, no UTF-8 encoder takes the other), cut to `limit` characters when given
    (PostgreSQL refuses a longer value for a String(limit) column; SQLite would keep it). For text that arrives with
    a message from outside (a task's error, a header): one such value refused its whole batch, and the recorder
    retried that batch forever, recording nothing after it."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    return text[:limit] if limit is not None else text


def sql_json(value: Any) -> Any:
    """A copy of decoded JSON that a JSON column holds: NaN and the infinities become the strings "NaN", "Infinity"
    and "-Infinity" (Python's json reads those literals, PostgreSQL's json type refuses them), and every text,
    keys included, goes through `sql_text`."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return sql_text(value)
    if isinstance(value, Mapping):
        return {sql_text(str(k)): sql_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sql_json(v) for v in value]
    return value


#: What `unstorable` finds, by the code the API answers it with (422).
NUL_CHARACTER, NON_FINITE_NUMBER, INVALID_TEXT = "nul_character", "non_finite_number", "invalid_text"


def unstorable(value: Any) -> str | None:
    """The first thing in decoded JSON `value` (any key, string or number, at any depth) that no SQL column holds
    as it is: a NUL (`nul_character`), NaN or an infinity (`non_finite_number`), an unpaired surrogate
    (`invalid_text`, no UTF-8 encoder takes it); None when there is none. Input from outside is refused with it
    (the API's body guard, the console's replay form), where `sql_text`/`sql_json` escape what arrives in a message."""
    if isinstance(value, str):
        if "\x00" in value:
            return NUL_CHARACTER
        return INVALID_TEXT if not value.isascii() and _SURROGATE.search(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else NON_FINITE_NUMBER
    if isinstance(value, Mapping):
        return next((found for k, v in value.items() if (found := unstorable(k) or unstorable(v))), None)
    if isinstance(value, list | tuple):
        return next((found for v in value if (found := unstorable(v))), None)
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every backend (SQLite stores none; values are UTC by construction)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base whose constraint names are stable for Alembic autogenerate."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class TimestampMixin:
    """`created_at` / `updated_at`, timezone-aware, set by the database session."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def _ensure_wal(cursor: Any) -> None:
    """Put a SQLite file in WAL mode. WAL is remembered in the file (migrations set it first), and switching takes
    an exclusive lock that ignores the busy timeout, so two processes opening a fresh file at once may both try:
    the loser waits for the winner's switch instead of failing."""
    deadline = time.monotonic() + 30
    while str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured SQL URL (SQLite gets WAL and a busy timeout)."""
    url = get_settings().sqlalchemy_url
    if url.startswith("sqlite"):
        get_settings().var_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            _ensure_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    lock_timeout_ms = round(get_settings().database_lock_timeout_s * 1000)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        # (a held ACCESS EXCLUSIVE lock hung every read of its table for as long as it was held: the operator's test)
        connect_args={"options": f"-c lock_timeout={lock_timeout_ms}"} if url.startswith("postgresql") else {},
    )


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """Session factory bound to `get_engine()`; objects stay readable after commit."""
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error; the only place that commits."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def forget_inherited_pool(**_: object) -> None:
    """In a forked child (a prefork pool process): drop the parent's pooled connections without closing them.

    The parent opens some at boot (e.g. to restore revocations); two processes on one PostgreSQL socket corrupt
    each other's transactions. The parent still owns those sockets, so they are not closed; the child opens its
    own. Connected to Celery's `worker_process_init` (app/engine/bootsteps.py).
    """
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()


def reset_engine() -> None:
    """Dispose of the engine (after settings change, or in a forked child)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
