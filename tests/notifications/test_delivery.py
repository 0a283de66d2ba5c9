"""Sending notifications for real: SMTP and HTTP providers, retries, permanent failures, exactly-once sends."""

from __future__ import annotations

import uuid
from datetime import timedelta

from app.db import session_scope, utcnow
from app.engine import publish
from app.notifications import service as notification_service
from app.notifications.models import Notification
from tests.support.api import auth
from tests.support.session import join


def _phone() -> str:
    return "+4917" + str(uuid.uuid4().int)[:9]


def _send(api, key, headers=None, **body):
    body = {"channel": "sms", "body": "hello", **body}
    response = api.post("/api/v1/notifications", json=body, headers={**auth(key), **(headers or {})})
    assert response.status_code == 202, response.text
    return response.json()


def _notification(api, key, notification_id):
    return api.get(f"/api/v1/notifications/{notification_id}", headers=auth(key)).json()


def _until(api, key, notification_id, status):
    return join(
        lambda: (n := _notification(api, key, notification_id))["status"] == status and n,
        timeout=60,
        what=f"notification {notification_id} to be {status}",
    )


def test_an_sms_that_gets_two_500s_is_retried_and_sent_once(api, client_key, delivered):
    # Given a provider that fails twice with 500 before accepting
    phone = _phone()
    delivered.provider.script["/sms"] = [(500, {"error": "busy"}), (500, {"error": "busy"})]
    # When an SMS is sent
    sent = _send(api, client_key, recipient=phone, body="your parcel is here")
    # Then it ends sent after three attempts, once at the provider's side as accepted
    row = _until(api, client_key, sent["notification_id"], "sent")
    assert row["attempts"] == 3 and row["provider_message_id"].startswith("prov-")
    calls = delivered.provider.to("/sms", phone)
    assert len(calls) == 3 and calls[-1].body["body"] == "your parcel is here"
    assert len({c.headers["Idempotency-Key"] for c in calls}) == 1


def test_a_400_fails_the_push_at_once_with_the_providers_reason_and_dead_letters_it(
    api, client_key, admin_key, delivered
):
    # Given a provider that refuses the device token
    delivered.provider.script["/push"] = [(400, {"error": "unknown device token"})]
    # When a push is sent
    sent = _send(api, client_key, channel="push", recipient="device-" + uuid.uuid4().hex, subject="Hi", body="x")
    # Then it fails after one attempt with the provider's reason
    row = _until(api, client_key, sent["notification_id"], "failed")
    assert row["attempts"] == 1 and "400" in row["last_error"] and "unknown device token" in row["last_error"]
    # And the task is dead-lettered, visibly
    letter = join(
        lambda: api.get(
            "/api/v1/tasks/dead-letters", params={"task_id": sent["task_id"]}, headers=auth(admin_key)
        ).json()["items"],
        timeout=60,
        what="the dead letter",
    )
    assert letter[0]["reason"] == "failed"


def test_smtp_rejections_are_permanent_for_5xx_and_retried_for_4xx(api, client_key, delivered):
    refused, greylisted = f"gone-{uuid.uuid4().hex[:6]}@example.com", f"grey-{uuid.uuid4().hex[:6]}@example.com"
    delivered.inbox.reject[refused] = "550 5.1.1 No such user"
    delivered.inbox.reject[greylisted] = "451 4.7.1 Try again later"
    bad = _send(api, client_key, channel="email", recipient=refused, subject="s", body="b")
    grey = _send(api, client_key, channel="email", recipient=greylisted, subject="s", body="b")
    row = _until(api, client_key, bad["notification_id"], "failed")
    assert row["attempts"] == 1 and "550" in row["last_error"]
    # The greylisted one is retried; once the server accepts it, it is sent
    join(lambda: _notification(api, client_key, grey["notification_id"])["attempts"] >= 1, what="a first attempt")
    delivered.inbox.reject.pop(greylisted)
    row = _until(api, client_key, grey["notification_id"], "sent")
    assert row["attempts"] >= 2 and len(delivered.inbox.to(greylisted)) == 1


def test_a_redelivered_or_replayed_send_does_not_send_twice(api, client_key, delivered):
    # Given an email that was sent
    address = f"once-{uuid.uuid4().hex[:6]}@example.com"
    sent = _send(api, client_key, channel="email", recipient=address, subject="Once", body="only once")
    _until(api, client_key, sent["notification_id"], "sent")
    # When its send task runs again (as a redelivery or a replay would)
    again = publish.dispatch(
        "notifications.send_email", kwargs={"notification_id": sent["notification_id"]}, triggered_by=client_key[0]
    )
    result = join(
        lambda: (
            (t := api.get(f"/api/v1/tasks/task/{again.task_id}", headers=auth(client_key)).json())["state"] == "SUCCESS"
            and t
        ),
        what="the second run",
    )
    # Then it reports the earlier send and the inbox holds one message
    assert result["result"]["result"] == "already"
    assert len(delivered.inbox.to(address)) == 1
    email = delivered.inbox.to(address)[0]
    assert email["Message-ID"] == f"<notification-{sent['notification_id']}@courier>"
    assert email.get_body(("html",)) is not None


def test_the_idempotency_key_returns_the_first_answer_and_refuses_another_body(api, client_key, delivered):
    phone, key = _phone(), uuid.uuid4().hex
    first = _send(api, client_key, headers={"Idempotency-Key": key}, recipient=phone)
    second = _send(api, client_key, headers={"Idempotency-Key": key}, recipient=phone)
    assert first == second
    other = api.post(
        "/api/v1/notifications",
        json={"channel": "sms", "recipient": phone, "body": "different"},
        headers={**auth(client_key), "Idempotency-Key": key},
    )
    assert other.status_code == 422
    _until(api, client_key, first["notification_id"], "sent")
    with session_scope() as session:
        assert session.query(Notification).filter_by(recipient=phone).count() == 1
    assert len(delivered.provider.to("/sms", phone)) == 1


def test_a_scheduled_notification_is_not_sent_early_and_can_be_cancelled_before(api, client_key, delivered):
    # Given two SMS scheduled a few seconds ahead
    send_at = utcnow() + timedelta(seconds=3)
    keep = _send(api, client_key, recipient=_phone(), send_at=send_at.isoformat())
    drop = _send(api, client_key, recipient=_phone(), send_at=send_at.isoformat())
    # When the scheduler runs before they are due
    early = publish.dispatch("notifications.process_scheduled_notifications", kwargs={}, triggered_by=client_key[0])
    join(
        lambda: api.get(f"/api/v1/tasks/task/{early.task_id}", headers=auth(client_key)).json()["state"] == "SUCCESS",
        what="the early scheduler run",
    )
    # Then nothing is sent, and one of them can still be cancelled
    assert _notification(api, client_key, keep["notification_id"])["status"] == "pending"
    cancelled = api.post(f"/api/v1/notifications/{drop['notification_id']}/cancel", headers=auth(client_key))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # When the scheduler runs after they are due
    join(lambda: utcnow() > send_at, what="the send time")
    publish.dispatch("notifications.process_scheduled_notifications", kwargs={}, triggered_by=client_key[0])
    # Then the kept one is sent, not before its time, and the cancelled one never
    row = _until(api, client_key, keep["notification_id"], "sent")
    from datetime import datetime

    assert datetime.fromisoformat(row["sent_at"]) >= send_at
    assert _notification(api, client_key, drop["notification_id"])["status"] == "cancelled"
    assert (
        api.post(f"/api/v1/notifications/{keep['notification_id']}/cancel", headers=auth(client_key)).status_code == 409
    )


def test_notify_sends_after_the_callers_commit_and_not_after_a_rollback(api, client_key, delivered):
    kept, rolled_back = f"kept-{uuid.uuid4().hex[:6]}@example.com", f"gone-{uuid.uuid4().hex[:6]}@example.com"
    # Given one caller that rolls back and one that commits
    try:
        with session_scope() as session:
            notification_service.notify(session=session, channel="email", recipient=rolled_back, subject="x", body="y")
            raise RuntimeError("the caller's transaction fails")
    except RuntimeError:
        pass
    with session_scope() as session:
        row = notification_service.notify(session, channel="email", recipient=kept, subject="Hi", body="Yo")
    # Then the committed one is delivered and the other neither exists nor arrives
    join(lambda: delivered.inbox.to(kept), what="the committed notification")

    def status() -> str:
        with session_scope() as session:
            return str(session.get(Notification, row.id).status)

    # (the worker marks it sent in the transaction around the SMTP send: it commits just after the mail arrives)
    join(lambda: status() == "sent", what="the notification to be marked sent")
    with session_scope() as session:
        assert session.query(Notification).filter_by(recipient=rolled_back).count() == 0
    assert delivered.inbox.to(rolled_back) == []


def test_a_security_alert_goes_out_once_per_dedupe_key(api, client_key, delivered):
    from tests.support.delivery import ALERT_ADMIN

    # Given a user with a push device
    email = f"alert-{uuid.uuid4().hex[:6]}@example.com"
    user = api.post(
        "/api/v1/identity/users", json={"email": email, "display_name": "Al"}, headers=auth(client_key)
    ).json()["user"]
    device = "device-" + uuid.uuid4().hex
    api.post(f"/api/v1/identity/users/{user['id']}/devices", json={"token": device}, headers=auth(client_key))
    # When the same alert is dispatched twice
    kwargs = {
        "user_id": user["id"],
        "kind": "login_anomaly",
        "details": {"ip": "203.0.113.9"},
        "dedupe_key": uuid.uuid4().hex,
    }
    tasks = [
        publish.dispatch("identity.send_security_alert", kwargs=kwargs, triggered_by=client_key[0]) for _ in range(2)
    ]
    for task in tasks:
        join(
            lambda t=task: (
                api.get(f"/api/v1/tasks/task/{t.task_id}", headers=auth(client_key)).json()["state"] == "SUCCESS"
            ),
            what="alert task",
        )
    # Then the user, the admins and the device each got it once
    alerts_to_user = [m for m in delivered.inbox.to(email) if "Security alert" in m["Subject"]]
    assert len(alerts_to_user) == 1 and "203.0.113.9" in alerts_to_user[0].get_body(("plain",)).get_content()
    admin_alerts = [m for m in delivered.inbox.to(ALERT_ADMIN) if "login_anomaly" in m["Subject"]]
    assert len(admin_alerts) == 1
    assert len(delivered.provider.to("/push", device)) == 1


def test_bad_notification_input_gets_a_clear_4xx(api, client_key, admin_key):
    for body in (
        {"channel": "sms", "recipient": "12345", "body": "x"},
        {"channel": "email", "recipient": "nope", "body": "x"},
        {"channel": "fax", "recipient": "x", "body": "x"},
        {"channel": "sms", "recipient": _phone(), "body": "x", "send_at": "2030-01-01T00:00:00"},
    ):
        response = api.post("/api/v1/notifications", json=body, headers=auth(client_key))
        assert response.status_code == 422, response.text
    assert api.get("/api/v1/notifications/999999999", headers=auth(client_key)).status_code == 404
    # A client cannot read another client's notification
    from tests.support.api import make_key

    other = make_key("client")
    sent = _send(api, client_key, recipient=_phone())
    assert api.get(f"/api/v1/notifications/{sent['notification_id']}", headers=auth(other)).status_code == 404
    assert api.get(f"/api/v1/notifications/{sent['notification_id']}", headers=auth(admin_key)).status_code == 200


def test_an_address_that_would_add_or_hide_recipients_or_end_the_headers_is_a_422(api, client_key):
    # Given addresses a mail header reads as several recipients, a group, a display name or a header's end
    bad = (
        "root,spy@evil.example",
        "undisclosed:spy@evil.example;",
        "Reader<spy@evil.example>",
        "reader@example.com\n",
    )
    for recipient in bad:
        # When a client sends to one, alone or in a bulk send
        one = {"channel": "email", "recipient": recipient, "subject": "s", "body": "x"}
        bulk = {"channel": "email", "recipients": [recipient], "subject": "s", "body": "x"}
        # Then the API refuses it before anything is stored or sent
        for path, body in (("/api/v1/notifications", one), ("/api/v1/notifications/bulk", bulk)):
            response = api.post(path, json=body, headers=auth(client_key))
            assert response.status_code == 422, (recipient, response.text)
    # And a phone number is one line too
    sms = {"channel": "sms", "recipient": _phone() + "\n", "body": "x"}
    response = api.post("/api/v1/notifications", json=sms, headers=auth(client_key))
    assert response.status_code == 422, response.text


def test_an_email_subject_that_would_add_headers_is_a_422_raw_encoded_or_through_data(api, client_key):
    # Given a subject whose RFC 2047 encoded-word decodes to a line break and a Bcc header, and raw line breaks
    recipient = f"reader-{uuid.uuid4().hex[:6]}@example.com"
    for subject in ("=?utf-8?q?Hello=0D=0ABcc:_spy@evil.example?=", "Hello\r\nBcc: spy@evil.example", "Hello\n"):
        # When a client sends one as an email's subject, or in `data` (the template renders it in the subject's place)
        for body in (
            {"channel": "email", "recipient": recipient, "subject": subject, "body": "x"},
            {"channel": "email", "recipient": recipient, "subject": "Hello", "body": "x", "data": {"subject": subject}},
            {"channel": "email", "recipients": [recipient], "subject": subject, "body": "x"},
        ):
            path = "/api/v1/notifications/bulk" if "recipients" in body else "/api/v1/notifications"
            response = api.post(path, json=body, headers=auth(client_key))
            # Then the API refuses it with a 422
            assert response.status_code == 422, (body, response.text)


def test_retry_failed_notifications_sends_again_only_transient_failures_with_attempts_left(api, client_key, delivered):
    # Given three failed SMS: one transient with attempts left, one transient out of attempts, one permanent
    phones = [_phone() for _ in range(3)]
    with session_scope() as session:
        rows = [
            notification_service.create(
                session=session, channel="sms", recipient=p, body="again", created_by=client_key[0]
            )
            for p in phones
        ]
        for row, (retryable, attempts) in zip(rows, [(True, 3), (True, 10), (False, 1)], strict=True):
            row.status, row.retryable, row.attempts, row.last_error = "failed", retryable, attempts, "earlier failure"
    ids = [row.id for row in rows]
    # When the periodic retry runs
    task = publish.dispatch("notifications.retry_failed_notifications", kwargs={}, triggered_by=client_key[0])
    join(
        lambda: api.get(f"/api/v1/tasks/task/{task.task_id}", headers=auth(client_key)).json()["state"] == "SUCCESS",
        what="the retry run",
    )
    # Then only the first is sent; the others stay failed
    _until(api, client_key, ids[0], "sent")
    assert [_notification(api, client_key, i)["status"] for i in ids[1:]] == ["failed", "failed"]
    assert [len(delivered.provider.to("/sms", p)) for p in phones] == [1, 0, 0]


def test_the_scheduler_runs_at_least_once_a_minute():
    from app.engine.celery_app import schedule

    entries = {entry["task"]: entry["schedule"] for entry in schedule().values()}
    assert entries["notifications.process_scheduled_notifications"] <= 60
    assert entries["notifications.retry_failed_notifications"] == 900
    assert entries["identity.cleanup_expired_tokens"] == entries["identity.cleanup_expired_sessions"] == 3600


def test_a_429_with_retry_after_is_retried_and_then_sent(api, client_key, delivered):
    phone = _phone()
    delivered.provider.script["/sms"] = [(429, {"error": "slow down"}, {"Retry-After": "1"})]
    sent = _send(api, client_key, recipient=phone)
    row = _until(api, client_key, sent["notification_id"], "sent")
    assert row["attempts"] == 2 and len(delivered.provider.to("/sms", phone)) == 2
