"""Reports end to end with a real worker: daily (JSON and CSV), GDPR subject access, SOX with the chain
verification; `report.ready` is emitted to subscribed webhooks."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta
from typing import Any

from app.audit import service as audit_service
from app.compliance import reports
from app.compliance.collectors import email_target
from app.db import session_scope, utcnow
from app.identity.models import User, UserSession
from app.notifications.models import Notification
from tests.support.api import auth
from tests.support.session import join


def request_report(api: Any, key: tuple[str, str], **body: Any) -> dict[str, Any]:
    response = api.post("/api/v1/audit/reports", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    accepted = dict(response.json())

    def ready() -> dict[str, Any] | None:
        found = api.get(f"/api/v1/audit/reports/{accepted['report_id']}", headers=auth(key)).json()
        assert found["status"] != "failed", found
        return found if found["status"] == "ready" else None

    return dict(join(ready, timeout=60, what="the report"))


def download(api: Any, key: tuple[str, str], report_id: int, fmt: str = "json") -> Any:
    response = api.get(f"/api/v1/audit/reports/{report_id}/download", params={"format": fmt}, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json() if fmt == "json" else response.text


def test_the_daily_report_counts_actions_failed_authentications_and_admin_actions(api, admin_key, worker):
    # Given some activity today: a failed authentication and an admin's change
    api.get("/api/v1/tasks/runs", headers={"Authorization": "Bearer ck_nope"})
    api.post("/api/v1/integrations/events", json={"type": "daily.test", "data": {}}, headers=auth(admin_key))
    # When today's report is requested
    report = request_report(api, admin_key, kind="daily", day=utcnow().date().isoformat())
    # Then it counts them, by action, actor and outcome
    body = download(api, admin_key, report["id"])
    assert body["failed_authentications"] >= 1
    assert body["by_action"]["auth.failed"] >= 1
    assert body["by_actor"][admin_key[0]] >= 1
    assert body["by_outcome"]["success"] >= 1
    assert body["admin_actions"] >= 1
    assert any(e["actor"] == admin_key[0] for e in body["admin_action_entries"])
    assert report["summary"]["failed_authentications"] == body["failed_authentications"]
    # And the CSV carries the same counts
    rows = list(csv.DictReader(io.StringIO(download(api, admin_key, report["id"], "csv"))))
    assert {
        "dimension": "failed_authentications",
        "key": "auth.failed",
        "count": str(body["failed_authentications"]),
    } in rows


def test_a_gdpr_export_holds_the_subjects_audit_entries_and_nothing_about_others(api, admin_key, worker):
    # Given identity events about user 4242 (recorded as the identity domain records them) and about another user
    with session_scope() as session:
        audit_service.record(
            session=session, actor="identity", action="identity.mfa.verify", target="user:4242", outcome="failure"
        )
        audit_service.record(
            session=session,
            actor="identity",
            action="identity.password_reset.request",
            target=email_target("Subject@Example.com"),
            details={"client_address": "203.0.113.9"},
        )
        audit_service.record(session=session, actor="identity", action="identity.mfa.verify", target="user:4243")
    # When an admin requests the subject access export
    report = request_report(api, admin_key, kind="gdpr", user_id=4242, email="subject@example.com")
    body = download(api, admin_key, report["id"])
    # Then it has the subject's entries, by user id and by hashed e-mail, and none of another user's
    entries = body["sections"]["audit_entries"]
    assert {e["action"] for e in entries} == {"identity.mfa.verify", "identity.password_reset.request"}
    assert all(e["target"] in ("user:4242", email_target("subject@example.com")) for e in entries)
    assert body["subject"] == {"user_id": 4242}
    # And CSV is not offered for a nested export
    missing = api.get(
        f"/api/v1/audit/reports/{report['id']}/download", params={"format": "csv"}, headers=auth(admin_key)
    )
    assert missing.status_code == 409


def test_a_sox_report_lists_privileged_actions_with_a_passing_chain_verification(api, admin_key, worker):
    since = utcnow() - timedelta(minutes=5)
    api.post("/api/v1/integrations/events", json={"type": "sox.test", "data": {}}, headers=auth(admin_key))
    report = request_report(
        api, admin_key, kind="sox", since=since.isoformat(), until=(utcnow() + timedelta(minutes=1)).isoformat()
    )
    body = download(api, admin_key, report["id"])
    assert body["chain_verification"]["ok"] is True and body["chain_verification"]["checked"] > 0
    assert any(e["action"] == "POST /api/v1/integrations/events" for e in body["privileged_actions"])
    assert all(
        e["role"] == "admin" or e["action"].startswith(("api_key.", "dead_letter.", "integrations.", "POST"))
        for e in body["privileged_actions"]
    )


def test_report_requests_are_validated(api, admin_key, client_key):
    assert api.post("/api/v1/audit/reports", json={"kind": "gdpr"}, headers=auth(admin_key)).status_code == 422
    assert (
        api.post(
            "/api/v1/audit/reports",
            json={"kind": "sox", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            headers=auth(admin_key),
        ).status_code
        == 422
    )
    # a day whose end no date can hold (its report failed in the worker, OverflowError, after a 202)
    answer = api.post("/api/v1/audit/reports", json={"kind": "daily", "day": "9999-12-31"}, headers=auth(admin_key))
    assert answer.status_code == 422 and "day must be before" in answer.text, answer.text
    assert api.post("/api/v1/audit/reports", json={"kind": "daily"}, headers=auth(client_key)).status_code == 403
    assert api.get("/api/v1/audit/reports/987654", headers=auth(admin_key)).status_code == 404


def test_the_scheduled_daily_report_of_a_day_is_one_report_however_often_beat_asks():
    with session_scope() as session:
        first = reports.scheduled_daily(session=session, day="2026-01-01").id
    with session_scope() as session:
        assert reports.scheduled_daily(session=session, day="2026-01-01").id == first
        assert reports.scheduled_daily(session=session, day="2026-01-02").id != first


def test_a_gdpr_export_holds_the_profile_sessions_and_notifications_but_no_secret(api, admin_key, worker):
    # Given a user with a session, a message sent to them, and one sent to someone else
    email = f"gdpr-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope() as session:
        user = User(email=email, display_name="Data Subject", password_hash="scrypt$secret", locale="en")
        session.add(user)
        session.flush()
        user_id = user.id
        session.add(UserSession(user_id=user_id, token_hash="f" * 64, expires_at=utcnow() + timedelta(days=1)))
        session.add(Notification(channel="email", recipient=email, subject="Welcome", body="Hello", status="sent"))
        session.add(Notification(channel="email", recipient="other@example.com", subject="Other", body="x"))
        audit_service.record(session=session, actor="identity", action="identity.user.create", target=f"user:{user_id}")
        audit_service.record(
            session=session, actor="identity", action="identity.password_reset.request", target=email_target(email)
        )
    # When the export is built (no e-mail given: the account's own is used for hashed targets)
    body = download(api, admin_key, request_report(api, admin_key, kind="gdpr", user_id=user_id)["id"])
    sections = body["sections"]
    # Then it has the profile without the password hash, the session without its token, their messages only
    assert sections["profile"][0]["email"] == email and sections["profile"][0]["has_password"] is True
    assert len(sections["sessions"]) == 1 and "token_hash" not in sections["sessions"][0]
    assert [n["subject"] for n in sections["notifications"]] == ["Welcome"]
    assert {e["action"] for e in sections["audit_entries"]} == {
        "identity.user.create",
        "identity.password_reset.request",
    }
    assert "scrypt$secret" not in json.dumps(body) and "f" * 64 not in json.dumps(body)


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_written_as_text():
    # Given report rows whose keys come from outside: task names (anyone with broker credentials picks one), actors
    dangerous = ['=HYPERLINK("http://evil.example","open")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx"]
    rows = [{"dimension": "by_task", "key": key, "count": 1} for key in dangerous]
    rows.append({"dimension": "by_task", "key": "system.ping", "count": -1})
    # When the CSV is written and read back
    read = list(csv.DictReader(io.StringIO(reports._csv(rows).decode())))
    # Then each dangerous cell starts with a quote, so a spreadsheet shows it as text; other cells are unchanged
    assert [row["key"] for row in read] == [f"'{key}" for key in dangerous] + ["system.ping"]
    assert read[-1]["count"] == "-1"
