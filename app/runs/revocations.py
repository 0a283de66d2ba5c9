"""Durable revocation: SQL is the record, Redis the fast check every task makes before it runs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.constants import REVOKED_KEY, STARTS_KEY
from app.db import utcnow
from app.redis_store import get_redis
from app.runs.models import Revocation


def record(
    *, session: Session, task_id: str, revoked_by: str | None, terminate: bool, reason: str | None
) -> Revocation:
    """Write the revocation to SQL, then to Redis; the caller commits the session."""
    row = session.get(Revocation, task_id)
    if row is None:
        row = Revocation(
            task_id=task_id, revoked_at=utcnow(), revoked_by=revoked_by, terminate=terminate, reason=reason
        )
        session.add(row)
    else:
        row.terminate = row.terminate or terminate
    session.flush()
    get_redis().set(REVOKED_KEY.format(task_id=task_id), "1", ex=get_settings().revocation_ttl_s)
    return row


def last_started_attempt(task_id: str, *, upto: int) -> int | None:
    """The highest attempt (Celery's `retries`, 0 to `upto`) that passed a worker's start check, from the start
    counters in Redis (app/engine/guarantees/starts.py), or None. Current where the run history is not yet: the
    recorder writes a start to SQL up to a flush interval later. By name, in one MGET: a SCAN for them would walk
    every key in Redis (each result and meta of the last RESULT_EXPIRES_S)."""
    keys = [STARTS_KEY.format(task_id=task_id, retries=n) for n in range(max(upto, 0) + 1)]
    counters = get_redis().mget(keys)
    return max((n for n, counter in enumerate(counters) if counter is not None), default=None)


def is_revoked(task_id: str) -> bool:
    """True when the task was revoked; one Redis round trip."""
    return bool(get_redis().exists(REVOKED_KEY.format(task_id=task_id)))


def restore_to_redis(*, session: Session) -> int:
    """Copy every revocation younger than REVOCATION_TTL_S from SQL to Redis (worker boot; Redis restarts)."""
    ttl = get_settings().revocation_ttl_s
    since = utcnow() - timedelta(seconds=ttl)
    ids = list(session.scalars(select(Revocation.task_id).where(Revocation.revoked_at >= since)))
    if ids:
        pipe = get_redis().pipeline(transaction=False)
        for task_id in ids:
            pipe.set(REVOKED_KEY.format(task_id=task_id), "1", ex=ttl)
        pipe.execute()
    return len(ids)
