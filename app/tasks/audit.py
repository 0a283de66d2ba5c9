"""Audit tasks: daily and compliance reports, archival of old entries, anomaly detection."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from app.audit import archive
from app.compliance import anomalies, reports
from app.config import get_settings
from app.db import session_scope, utcnow
from app.engine.task import CourierTask, courier_task

logger = logging.getLogger(__name__)


@courier_task("audit.generate_daily_report")
def generate_daily_report(self: CourierTask, *, report_id: int | None = None, day: str | None = None) -> dict[str, Any]:
    """Build a daily report: the one requested (`report_id`), else a new one for `day` (default: yesterday, UTC)."""
    if report_id is None:
        wanted = day or (utcnow().date() - timedelta(days=1)).isoformat()
        with session_scope() as session:
            report_id = reports.scheduled_daily(session=session, day=wanted).id
    return reports.build(report_id=report_id, settings=get_settings())


@courier_task("audit.generate_compliance_report")
def generate_compliance_report(self: CourierTask, *, report_id: int) -> dict[str, Any]:
    """Build a requested GDPR (subject access) or SOX (privileged actions + chain verification) report."""
    return reports.build(report_id=report_id, settings=get_settings())


@courier_task("audit.archive_old_logs")
def archive_old_logs(self: CourierTask) -> dict[str, int]:
    """Move entries older than AUDIT_RETENTION_DAYS to archive files (finishing any batch a crash interrupted)."""
    result = archive.run(settings=get_settings())
    logger.info("Audit archival moved %d entries into %d file(s).", result["rows"], result["files"])
    return result


@courier_task("audit.detect_anomalies")
def detect_anomalies(self: CourierTask) -> dict[str, Any]:
    """Scan the recent audit trail and dead letters; alert each new finding once."""
    return anomalies.detect(settings=get_settings())
