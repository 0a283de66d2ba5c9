"""Anomaly detection over the audit trail and the dead letters: bursts of failed MFA or password-reset requests
per user or address, failed authentications per address, admin actions in unusual volume, dead-letter spikes.

Each finding is stored once (a unique key per rule, subject and window) and alerted at most once: the alert
task is published after the finding commits, and a finding whose publish failed is alerted on the next run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import dispatch
from app.audit.context import AUTH_FAILED
from app.audit.models import AuditEvent, AuditFinding
from app.config import Settings
from app.db import session_scope, utcnow
from app.deadletters.models import DeadLetter
from app.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

#: The identity domain's alert task (it e-mails SECURITY_ALERT_EMAILS).
ALERT_TASK = "identity.send_security_alert"
MFA_VERIFY = "identity.mfa.verify"
RESET_REQUEST = "identity.password_reset.request"


@dataclass(frozen=True)
class Hit:
    """A rule tripped: who (subject), how many times in the window, and what to tell the admins."""

    rule: str
    subject: str
    count: int
    details: dict[str, Any]

    @property
    def user_id(self) -> int | None:
        """The user the finding is about, when the subject names one."""
        kind, _, value = self.subject.partition(":")
        return int(value) if kind == "user" and value.isdigit() else None


def _grouped(session: Session, column: Any, since: datetime, *conditions: Any) -> list[tuple[str, int]]:
    rows = session.execute(
        select(column, func.count()).where(AuditEvent.at >= since, column.is_not(None), *conditions).group_by(column)
    )
    return [(str(key), int(count)) for key, count in rows]


#: Keys under which an entry's details may carry the client address (when it was recorded outside a request).
ADDRESS_KEYS = ("client_address", "client_ip", "ip", "address")


def _by_address(session: Session, since: datetime, action: str) -> list[tuple[str, int]]:
    """Counts of `action` per client address: the address its details carry (the end user's, as the caller
    reported it), else the entry's own column (the API caller's)."""
    counts: dict[str, int] = {}
    rows = session.execute(
        select(AuditEvent.client_address, AuditEvent.details).where(AuditEvent.at >= since, AuditEvent.action == action)
    )
    for column, details in rows:
        given = (str(details[k]) for k in ADDRESS_KEYS if isinstance(details, dict) and details.get(k))
        found = next(given, None) or column
        if found:
            counts[found] = counts.get(found, 0) + 1
    return list(counts.items())


def scan(*, session: Session, settings: Settings, now: datetime) -> list[Hit]:
    """Every rule over the last ANOMALY_WINDOW_S seconds."""
    since = now - timedelta(seconds=settings.anomaly_window_s)
    window = {"window_s": settings.anomaly_window_s, "since": since.isoformat()}
    hits: list[Hit] = []
    failed_mfa = (AuditEvent.action == MFA_VERIFY, AuditEvent.outcome == "failure")
    for target, count in _grouped(session, AuditEvent.target, since, *failed_mfa):
        if count >= settings.anomaly_mfa_failures:
            hits.append(Hit("mfa_failures", target, count, {**window, "threshold": settings.anomaly_mfa_failures}))
    for target, count in _grouped(session, AuditEvent.target, since, AuditEvent.action == RESET_REQUEST):
        if count >= settings.anomaly_reset_requests:
            hits.append(Hit("reset_requests", target, count, {**window, "threshold": settings.anomaly_reset_requests}))
    for address, count in _by_address(session, since, RESET_REQUEST):
        if count >= settings.anomaly_reset_requests:
            hits.append(
                Hit(
                    "reset_requests",
                    f"address:{address}",
                    count,
                    {**window, "threshold": settings.anomaly_reset_requests},
                )
            )
    for address, count in _grouped(session, AuditEvent.client_address, since, AuditEvent.action == AUTH_FAILED):
        if count >= settings.anomaly_failed_auths:
            hits.append(
                Hit(
                    "failed_authentications",
                    f"address:{address}",
                    count,
                    {**window, "threshold": settings.anomaly_failed_auths},
                )
            )
    for actor, count in _grouped(session, AuditEvent.actor, since, AuditEvent.role == "admin"):
        if count >= settings.anomaly_admin_actions:
            hits.append(
                Hit("admin_actions", f"actor:{actor}", count, {**window, "threshold": settings.anomaly_admin_actions})
            )
    dead = session.scalar(select(func.count()).where(DeadLetter.recorded_at >= since)) or 0
    if dead >= settings.anomaly_dead_letters:
        hits.append(
            Hit("dead_letter_spike", "dead_letters", int(dead), {**window, "threshold": settings.anomaly_dead_letters})
        )
    return hits


def finding_key(hit: Hit, settings: Settings, now: datetime) -> str:
    """Unique per rule, subject and window: a burst that lasts is one finding per window, not one per run."""
    bucket = int(now.timestamp()) // settings.anomaly_window_s
    return hashlib.sha256(f"{hit.rule}|{hit.subject}|{bucket}".encode()).hexdigest()


def _store(session: Session, hit: Hit, settings: Settings, now: datetime) -> AuditFinding | None:
    """The new finding for `hit`, or None when it is already known (then its count is brought up to date)."""
    since = now - timedelta(seconds=settings.anomaly_window_s)
    open_finding = session.scalar(
        select(AuditFinding)
        .where(AuditFinding.rule == hit.rule, AuditFinding.subject == hit.subject, AuditFinding.last_seen_at >= since)
        .order_by(AuditFinding.id.desc())
        .limit(1)
    )
    key = finding_key(hit, settings, now)
    if open_finding is None:
        open_finding = session.scalar(select(AuditFinding).where(AuditFinding.key == key))
    if open_finding is not None:
        open_finding.count = max(open_finding.count, hit.count)
        open_finding.last_seen_at = now
        return None
    finding = AuditFinding(
        key=key,
        rule=hit.rule,
        subject=hit.subject,
        count=hit.count,
        details=hit.details,
        first_seen_at=now,
        last_seen_at=now,
    )
    try:
        with session.begin_nested():
            session.add(finding)
    except IntegrityError:  # a concurrent run stored it first
        return None
    return finding


def alert(finding_id: int) -> str | None:
    """Publish the alert of one finding (after its commit) and note the task; None when it could not be sent."""
    if not dispatch.knows(ALERT_TASK):
        logger.warning("Finding %s is not alerted: the task %s does not exist here.", finding_id, ALERT_TASK)
        return None
    with session_scope() as session:
        finding = session.get(AuditFinding, finding_id)
        if finding is None or finding.alerted_at is not None:
            return None
        user_id = Hit(finding.rule, finding.subject, finding.count, {}).user_id
        kwargs = {
            "user_id": user_id,
            "kind": f"anomaly.{finding.rule}",
            "details": {"subject": finding.subject, "count": finding.count, **(finding.details or {})},
            "dedupe_key": f"finding:{finding.key}",
        }
    try:
        task_id = dispatch.enqueue(ALERT_TASK, kwargs=kwargs, triggered_by="audit.detect_anomalies")
    except ServiceUnavailable:
        logger.warning("Publishing the alert of finding %s failed; the next run retries it.", finding_id)
        return None
    with session_scope() as session:
        finding = session.get(AuditFinding, finding_id)
        assert finding is not None
        finding.alert_task_id, finding.alerted_at = task_id, utcnow()
    return task_id


def detect(*, settings: Settings) -> dict[str, Any]:
    """Scan, store new findings, and alert each new (or not yet alerted) finding once."""
    now = utcnow()
    with session_scope() as session:
        hits = scan(session=session, settings=settings, now=now)
        new = [f for f in (_store(session, hit, settings, now) for hit in hits) if f is not None]
        session.flush()
        new_ids = [f.id for f in new]
    with session_scope() as session:
        unalerted = list(session.scalars(select(AuditFinding.id).where(AuditFinding.alerted_at.is_(None))))
    alerted = [task_id for finding_id in unalerted if (task_id := alert(finding_id)) is not None]
    logger.info(
        "Anomaly scan: %d rule hit(s), %d new finding(s), %d alert(s) sent.", len(hits), len(new_ids), len(alerted)
    )
    return {"hits": len(hits), "new_findings": len(new_ids), "alerts": len(alerted)}
