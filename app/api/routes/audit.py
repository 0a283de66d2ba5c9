"""The audit trail under /api/v1/audit (admin): entries, chain verification, reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse

from app.api.deps import AdminDep, SessionDep, SettingsDep
from app.audit import archive
from app.audit import service as audit_service
from app.audit.models import ReportKind, ReportStatus
from app.audit.schemas import (
    AuditEventPage,
    AuditEventRead,
    DownloadFormat,
    ReportAccepted,
    ReportCreate,
    ReportRead,
    VerificationRead,
)
from app.compliance import reports
from app.db import utcnow
from app.engine import publish
from app.errors import ServiceUnavailable, error_responses
from app.schema_types import Id, Limit, Offset

router = APIRouter()

REPORT_TASKS = {
    ReportKind.daily: "audit.generate_daily_report",
    ReportKind.gdpr: "audit.generate_compliance_report",
    ReportKind.sox: "audit.generate_compliance_report",
}


@router.get("/events", response_model=AuditEventPage)
def list_audit_events(
    session: SessionDep,
    _: AdminDep,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=100, description="exact, or a prefix ending in *")] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    outcome: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AuditEventPage:
    """Audit entries, newest first, filtered by actor, action, target, outcome and time."""
    filters = audit_service.EventFilter(
        actor=actor, action=action, target=target, outcome=outcome, since=since, until=until
    )
    items, total = audit_service.list_events(session=session, filters=filters, limit=limit, offset=offset)
    return AuditEventPage(
        items=[AuditEventRead.model_validate(i) for i in items], total=total, limit=limit, offset=offset
    )


@router.get("/verify", response_model=VerificationRead)
def verify_audit_chain(session: SessionDep, settings: SettingsDep, _: AdminDep) -> VerificationRead:
    """Walk the whole hash chain (archive files, then the entries in SQL); report the first broken link."""
    return VerificationRead(**archive.verify_all(session=session, settings=settings).as_dict())


@router.post(
    "/reports", response_model=ReportAccepted, status_code=status.HTTP_202_ACCEPTED, responses=error_responses(503)
)
def request_report(body: ReportCreate, session: SessionDep, settings: SettingsDep, admin: AdminDep) -> ReportAccepted:
    """Request a daily, GDPR or SOX report; a low-tier task builds it. Poll the report (or the task)."""
    params: dict[str, Any]
    if body.kind is ReportKind.daily:
        params = {"day": (body.day or utcnow().date() - timedelta(days=1)).isoformat()}
    elif body.kind is ReportKind.gdpr:
        params = {"user_id": body.user_id, "email": body.email}
    else:
        params = body.model_dump(mode="json", include={"since", "until"})
    report = reports.request(session=session, kind=body.kind, params=params, requested_by=admin.name)
    session.commit()  # the task reads the row: it must exist before the task can run
    try:
        dispatched = publish.dispatch(REPORT_TASKS[body.kind], kwargs={"report_id": report.id}, triggered_by=admin.name)
    except ServiceUnavailable:
        report.status, report.error = ReportStatus.failed, "the task could not be dispatched (broker unavailable)"
        session.commit()
        raise
    report.task_id = dispatched.task_id
    return ReportAccepted(
        report_id=report.id,
        task_id=dispatched.task_id,
        status_url=dispatched.status_url,
        report_url=f"{settings.public_base_url}/api/v1/audit/reports/{report.id}",
    )


@router.get("/reports/{report_id}", response_model=ReportRead, responses=error_responses(404))
def read_report(report_id: Id, session: SessionDep, settings: SettingsDep, _: AdminDep) -> ReportRead:
    """A report's state and summary; `download_url` once it is ready."""
    found = ReportRead.model_validate(reports.get(session=session, report_id=report_id))
    if found.status is ReportStatus.ready:
        found.download_url = f"{settings.public_base_url}/api/v1/audit/reports/{report_id}/download"
    return found


@router.get("/reports/{report_id}/download", response_class=FileResponse, responses=error_responses(404, 409))
def download_report(
    report_id: Id,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
    format: DownloadFormat = "json",  # noqa: A002
) -> FileResponse:
    """The report file, JSON (default) or CSV."""
    path = reports.file_for(session=session, report_id=report_id, fmt=format, settings=settings)
    media = "application/json" if format == "json" else "text/csv"
    return FileResponse(path, media_type=media, filename=path.name)
