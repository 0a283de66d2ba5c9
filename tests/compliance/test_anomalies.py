"""Anomaly detection: bursts of failed MFA, password-reset requests per user or address and failed
authentications become findings, each stored (and alerted) once however often the scan runs."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.audit import service as audit_service
from app.audit.models import AuditFinding
from app.compliance import anomalies
from app.config import get_settings
from app.db import session_scope
from app.main import app
from tests.support.api import auth
from tests.support.session import join


def _findings(subject: str) -> list[AuditFinding]:
    with session_scope() as session:
        return list(session.scalars(select(AuditFinding).where(AuditFinding.subject == subject)))


def test_a_burst_of_failed_mfa_is_one_finding_however_often_the_scan_runs():
    settings = get_settings()
    user = f"user:{uuid.uuid4().int % 10**8}"
    # Given failed MFA verifications for one user, just below the threshold
    with session_scope() as session:
        for _ in range(settings.anomaly_mfa_failures - 1):
            audit_service.record(
                session=session, actor="identity", action=anomalies.MFA_VERIFY, target=user, outcome="failure"
            )
        audit_service.record(session=session, actor="identity", action=anomalies.MFA_VERIFY, target=user)
    anomalies.detect(settings=settings)
    assert _findings(user) == []
    # When one more fails, and the scan runs twice
    with session_scope() as session:
        audit_service.record(
            session=session, actor="identity", action=anomalies.MFA_VERIFY, target=user, outcome="failure"
        )
    anomalies.detect(settings=settings)
    anomalies.detect(settings=settings)
    # Then there is exactly one finding, with the count
    [finding] = _findings(user)
    assert finding.rule == "mfa_failures" and finding.count == settings.anomaly_mfa_failures


def test_password_reset_requests_are_counted_per_address_from_the_details():
    settings = get_settings()
    address = f"198.51.100.{uuid.uuid4().int % 250}"
    with session_scope() as session:
        for i in range(settings.anomaly_reset_requests):
            audit_service.record(
                session=session,
                actor="identity",
                action=anomalies.RESET_REQUEST,
                target=f"email:{i:016x}",
                details={"client_address": address},
            )
    anomalies.detect(settings=settings)
    [finding] = _findings(f"address:{address}")
    assert finding.rule == "reset_requests" and finding.count == settings.anomaly_reset_requests


def test_failed_authentications_per_address_are_a_finding():
    settings = get_settings()
    # Given a client address of this test's own (other tests' failed keys come from the TestClient's default)
    address = f"203.0.113.{uuid.uuid4().int % 250}"
    with TestClient(app, raise_server_exceptions=False, client=(address, 50000)) as api:
        for _ in range(settings.anomaly_failed_auths):
            api.get("/api/v1/tasks/runs", headers={"Authorization": "Bearer ck_guess"})
    anomalies.detect(settings=settings)
    [finding] = _findings(f"address:{address}")
    assert finding.rule == "failed_authentications" and finding.count >= settings.anomaly_failed_auths


def test_a_finding_with_a_user_names_that_user_for_the_alert():
    assert anomalies.Hit("mfa_failures", "user:12", 5, {}).user_id == 12
    assert anomalies.Hit("reset_requests", "address:1.2.3.4", 5, {}).user_id is None


def test_a_new_finding_raises_one_security_alert_task_through_the_identity_domain(api, admin_key, worker):
    settings = get_settings()
    address = f"192.0.2.{uuid.uuid4().int % 250}"
    with session_scope() as session:
        for i in range(settings.anomaly_reset_requests):
            audit_service.record(
                session=session,
                actor="identity",
                action=anomalies.RESET_REQUEST,
                target=f"email:{i:016x}",
                details={"client_address": address},
            )
    anomalies.detect(settings=settings)
    anomalies.detect(settings=settings)
    [finding] = _findings(f"address:{address}")
    assert finding.alert_task_id is not None and finding.alerted_at is not None

    def state() -> str:
        return str(api.get(f"/api/v1/tasks/task/{finding.alert_task_id}", headers=auth(admin_key)).json()["state"])

    join(lambda: state() == "SUCCESS", timeout=60, what="the security alert task")
    assert anomalies.ALERT_TASK == "identity.send_security_alert"
