"""Errors of the audit domain."""

from __future__ import annotations

from app.errors import Conflict, NotFound


class ReportNotFound(NotFound):
    """No report has this id."""

    def __init__(self, report_id: int) -> None:
        super().__init__(f"No report has id {report_id}.")


class ReportNotReady(Conflict):
    """The report's file cannot be downloaded (yet)."""

    def __init__(self, report_id: int, why: str) -> None:
        super().__init__(f"Report {report_id} cannot be downloaded: {why}.")
