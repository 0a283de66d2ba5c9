"""Reports: daily activity, GDPR subject access, SOX privileged actions. Requested as a row, built by a task into
JSON (and CSV where the report is a table) under AUDIT_REPORTS_DIR, then `report.ready` is emitted."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.audit import archive, chain
from app.audit.context import AUTH_FAILED
from app.audit.exceptions import ReportNotFound, ReportNotReady
from app.audit.models import AuditEvent, AuditReport, ReportKind, ReportStatus
from app.compliance import collectors
from app.config import Settings
from app.db import session_scope, utcnow
from app.deadletters.models import DeadLetter
from app.events import service as events

logger = logging.getLogger(__name__)

#: Actions that are privileged whoever performs them (admin keys' actions all count too).
PRIVILEGED_PREFIXES = ("api_key.", "dead_letter.", "integrations.webhook.disable", "POST /api/v1/tasks/task/")


#: `requested_by` of the reports beat asks for.
SCHEDULE = "schedule"


def request(*, session: Session, kind: ReportKind, params: dict[str, Any], requested_by: str) -> AuditReport:
    """Create a pending report."""
    report = AuditReport(kind=kind, params=params, status=ReportStatus.pending, requested_by=requested_by)
    session.add(report)
    session.flush()
    return report


def scheduled_daily(*, session: Session, day: str) -> AuditReport:
    """The scheduled daily report of `day`: the existing one (a redelivered beat task builds it once), or new."""
    existing = session.scalars(
        select(AuditReport)
        .where(AuditReport.kind == ReportKind.daily, AuditReport.requested_by == SCHEDULE)
        .order_by(AuditReport.id.desc())
        .limit(62)
    )
    for report in existing:
        if report.params.get("day") == day:
            return report
    return request(session=session, kind=ReportKind.daily, params={"day": day}, requested_by=SCHEDULE)


def get(*, session: Session, report_id: int) -> AuditReport:
    """One report; ReportNotFound otherwise."""
    report = session.get(AuditReport, report_id)
    if report is None:
        raise ReportNotFound(report_id)
    return report


def file_for(*, session: Session, report_id: int, fmt: str, settings: Settings) -> Path:
    """The path of a ready report's file in `fmt` (json or csv)."""
    report = get(session=session, report_id=report_id)
    if report.status != ReportStatus.ready or not report.files:
        raise ReportNotReady(report_id, str(report.status))
    name = report.files.get(fmt)
    if name is None:
        raise ReportNotReady(report_id, f"it has no {fmt} file (formats: {', '.join(sorted(report.files))})")
    path = settings.audit_reports_path / name
    if not path.is_file():
        raise ReportNotReady(report_id, f"its file {name} is no longer in AUDIT_REPORTS_DIR; request it again")
    return path


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _counts(session: Session, column: Any, since: datetime, until: datetime) -> dict[str, int]:
    rows = session.execute(
        select(column, func.count()).where(AuditEvent.at >= since, AuditEvent.at < until).group_by(column)
    )
    return {str(key): int(count) for key, count in rows}


def _privileged(since: datetime, until: datetime) -> Any:
    return (
        select(AuditEvent)
        .where(AuditEvent.at >= since, AuditEvent.at < until)
        .where(or_(AuditEvent.role == "admin", *(AuditEvent.action.startswith(p) for p in PRIVILEGED_PREFIXES)))
        .order_by(AuditEvent.id)
    )


def daily(session: Session, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Counts by action, actor and outcome for one UTC day, failed authentications, admin actions, dead letters."""
    day = date.fromisoformat(str(params["day"]))
    since, until = day_bounds(day)
    dead = session.execute(
        select(DeadLetter.task_name, DeadLetter.reason, func.count())
        .where(DeadLetter.recorded_at >= since, DeadLetter.recorded_at < until)
        .group_by(DeadLetter.task_name, DeadLetter.reason)
    )
    admin_actions = [chain.as_record(e) for e in session.scalars(_privileged(since, until))]
    by_action = _counts(session, AuditEvent.action, since, until)
    body: dict[str, Any] = {
        "day": day.isoformat(),
        "total": sum(by_action.values()),
        "by_action": by_action,
        "by_actor": _counts(session, AuditEvent.actor, since, until),
        "by_outcome": _counts(session, AuditEvent.outcome, since, until),
        "failed_authentications": by_action.get(AUTH_FAILED, 0),
        "admin_actions": len(admin_actions),
        "dead_letters": [{"task_name": t, "reason": str(r), "count": int(c)} for t, r, c in dead],
    }
    rows = [
        {"dimension": dim, "key": key, "count": count}
        for dim in ("by_action", "by_actor", "by_outcome")
        for key, count in body[dim].items()
    ]
    rows += [
        {"dimension": "dead_letters", "key": f"{d['task_name']}/{d['reason']}", "count": d["count"]}
        for d in body["dead_letters"]
    ]
    rows.append({"dimension": "failed_authentications", "key": AUTH_FAILED, "count": body["failed_authentications"]})
    body["admin_action_entries"] = admin_actions
    return body, rows


def gdpr(session: Session, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything Courier holds about one user, section by section (a subject access export)."""
    subject = collectors.Subject(user_id=int(params["user_id"]), email=params.get("email"))
    sections = collectors.collect(session=session, subject=subject)
    body = {"subject": {"user_id": subject.user_id}, "generated_at": utcnow().isoformat(), "sections": sections}
    return body, []


def sox(session: Session, params: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Privileged actions over [since, until), with the result of verifying the whole chain."""
    since, until = datetime.fromisoformat(str(params["since"])), datetime.fromisoformat(str(params["until"]))
    entries = [chain.as_record(e) for e in session.scalars(_privileged(since, until))]
    verification = archive.verify_all(session=session, settings=settings)
    body = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "privileged_actions": entries,
        "count": len(entries),
        "chain_verification": verification.as_dict(),
    }
    return body, entries


def _write(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / (name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, directory / name)


#: A cell a spreadsheet would read as a formula (`=HYPERLINK(...)`, `+cmd|...`, `@SUM(...)`, a leading tab or CR).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell: lists and objects as JSON; text that a spreadsheet would run as a formula (a task name or an
    actor from outside can start with `=`) behind a quote, which shows it as text (OWASP's CSV injection advice)."""
    if isinstance(value, dict | list):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue().encode()


def build(*, report_id: int, settings: Settings) -> dict[str, Any]:
    """Build a report's files (rerunnable: the same names are overwritten), mark it ready, emit `report.ready`."""
    with session_scope() as session:
        report = get(session=session, report_id=report_id)
        if report.status == ReportStatus.ready:
            return {"report_id": report_id, "status": "ready"}
        report.status = ReportStatus.running
    try:
        with session_scope() as session:
            report = get(session=session, report_id=report_id)
            if report.kind == ReportKind.daily:
                body, rows = daily(session, report.params)
            elif report.kind == ReportKind.gdpr:
                body, rows = gdpr(session, report.params)
            else:
                body, rows = sox(session, report.params, settings)
    except Exception as exc:
        with session_scope() as session:
            report = get(session=session, report_id=report_id)
            report.status, report.error, report.finished_at = (
                ReportStatus.failed,
                f"{type(exc).__name__}: {exc}",
                utcnow(),
            )
        raise
    stem = f"report-{report_id:08d}-{report.kind}"
    files = {"json": f"{stem}.json"}
    _write(settings.audit_reports_path, files["json"], json.dumps(body, indent=2, default=str).encode())
    if rows:
        files["csv"] = f"{stem}.csv"
        _write(settings.audit_reports_path, files["csv"], _csv(rows))
    summary = {k: v for k, v in body.items() if isinstance(v, int | str) or k == "chain_verification"}
    with session_scope() as session:
        report = get(session=session, report_id=report_id)
        report.status, report.files, report.summary, report.finished_at = ReportStatus.ready, files, summary, utcnow()
        report.error = None
        events.emit(session, "report.ready", {"report_id": report_id, "kind": str(report.kind), "files": sorted(files)})
    logger.info("Report %s (%s) is ready: %s.", report_id, report.kind, ", ".join(files.values()))
    return {"report_id": report_id, "status": "ready", "files": files}
