"""Channel backends on their own: the development outbox, and the HTTP provider's answers mapped to outcomes."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from app.config import get_settings
from app.db import session_scope
from app.notifications import delivery
from app.notifications import service as notification_service
from app.notifications.channels import OutgoingMessage, PermanentDeliveryError, TransientDeliveryError, sender_for
from app.notifications.channels.http import HttpSender
from app.notifications.channels.smtp import SmtpSender
from app.notifications.models import Notification
from tests.support.delivery import start_provider, start_smtp
from tests.support.session import ROOT


def test_the_development_outbox_keeps_each_message_as_a_readable_file_once():
    # Given the default backends (outbox) and an email notification
    with session_scope() as session:
        row = notification_service.create(
            session=session,
            channel="email",
            recipient="reader@example.com",
            subject="Hello",
            body="Plain words",
            template="message",
        )
    # When it is delivered twice (a redelivery)
    first = delivery.deliver(row.id, final_attempt=False)
    second = delivery.deliver(row.id, final_attempt=False)
    # Then one .eml file holds it, and the second delivery sent nothing
    assert (first.result, second.result) == ("sent", "already")
    path = get_settings().var_dir / "outbox" / "email" / f"notification-{row.id}.eml"
    assert path.is_file() and "Subject: Hello" in path.read_text()
    # And the reader shows it as a person reads it
    shown = subprocess.run(
        [sys.executable, "-m", "app.notifications.outbox", "latest", "email"], cwd=ROOT, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "To: reader@example.com" in shown.stdout and "Plain words" in shown.stdout


def test_a_cancelled_notification_is_never_delivered():
    with session_scope() as session:
        row = notification_service.create(session=session, channel="sms", recipient="+4915100000000", body="x")
    with session_scope() as session:
        notification_service.cancel(session=session, notification_id=row.id)
    assert delivery.deliver(row.id, final_attempt=True).result == "already"
    with session_scope() as session:
        assert session.get(Notification, row.id).attempts == 0


@pytest.mark.parametrize("recipient", ["root,spy@evil.example", "Reader<spy@evil.example>", "reader@example.com\n"])
def test_an_email_row_whose_recipient_is_not_one_address_fails_and_is_never_written(recipient):
    # Given an email row whose recipient a mail header reads as other or more recipients (stored before the API
    # checked addresses this strictly, or by a caller that skips the API)
    with session_scope() as session:
        row = notification_service.create(
            session=session, channel="email", recipient=recipient, subject="s", body="x", template="message"
        )
    # When it is delivered
    with pytest.raises(delivery.DeliveryFailed) as failed:
        delivery.deliver(row.id, final_attempt=False)
    # Then it fails for good, saying why, and no message was written
    assert not failed.value.transient
    with session_scope() as session:
        stored = session.get(Notification, row.id)
        assert stored.status == "failed" and "not one email address" in stored.last_error
    assert not (get_settings().var_dir / "outbox" / "email" / f"notification-{row.id}.eml").exists()


@pytest.mark.parametrize("where", ["subject", "data"])
def test_an_email_row_whose_subject_would_add_headers_fails_and_is_never_sent(where):
    # Given an email row whose subject (or `data["subject"]`, rendered in its place) decodes to a line break and a
    # Bcc header (stored before the API checked subjects, or by a caller that skips the API)
    injected = "=?utf-8?q?Hello=0D=0ABcc:_spy@evil.example?="
    recipient = f"reader-{uuid.uuid4().hex[:6]}@example.com"
    subject, data = (injected, None) if where == "subject" else ("Hello", {"subject": injected})
    with session_scope() as session:
        row = notification_service.create(
            session=session,
            channel="email",
            recipient=recipient,
            subject=subject,
            body="x",
            template="message",
            data=data,
        )
    # When it is delivered over SMTP
    inbox, controller = start_smtp()
    settings = get_settings().model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": inbox.port})
    try:
        with pytest.raises(delivery.DeliveryFailed) as failed:
            delivery.deliver(row.id, final_attempt=False, sender=SmtpSender(settings))
    finally:
        controller.stop()
    # Then it fails for good, saying why, and the SMTP server received nothing
    assert not failed.value.transient
    with session_scope() as session:
        stored = session.get(Notification, row.id)
        assert stored.status == "failed" and "line break" in stored.last_error
    assert inbox.messages == []


@pytest.fixture
def provider():
    server = start_provider()
    yield server
    server.shutdown()
    server.server_close()


def _sender(provider, fields="to:recipient,body:text,ref:reference"):
    return HttpSender(
        url=f"{provider.url}/sms", api_key="k-123", fields=fields, sender="Courier", id_field="id", timeout_s=2
    )


MESSAGE = OutgoingMessage(reference="notification-7", channel="sms", recipient="+4915100000001", subject="", text="hi")


def test_the_http_payload_takes_the_configured_shape_and_key(provider):
    sender = _sender(provider, fields="msisdn:recipient,content:text,client_ref:reference,from:sender")
    receipt = sender.send(MESSAGE)
    sender.close()
    call = provider.calls[0]
    assert call.body == {"msisdn": "+4915100000001", "content": "hi", "client_ref": "notification-7", "from": "Courier"}
    assert call.headers["Authorization"] == "Bearer k-123" and call.headers["Idempotency-Key"] == "notification-7"
    assert receipt.provider_message_id.startswith("prov-")


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (500, TransientDeliveryError, None),
        (503, TransientDeliveryError, None),
        (429, TransientDeliveryError, 7.0),
        (400, PermanentDeliveryError, None),
        (404, PermanentDeliveryError, None),
    ],
)
def test_provider_answers_map_to_transient_or_permanent_failures(provider, status, error, retry_after):
    provider.script["/sms"] = [(status, {"error": f"status {status}"})]
    if retry_after:
        provider.script["/sms"] = [(status, {"error": "slow down"}, {"Retry-After": "7"})]
    sender = _sender(provider)
    with pytest.raises(error) as raised:
        sender.send(MESSAGE)
    sender.close()
    assert str(status) in raised.value.reason
    assert raised.value.retry_after == retry_after


def test_an_unreachable_provider_is_a_transient_failure():
    sender = HttpSender(
        url="http://127.0.0.1:9/sms", api_key="", fields="to:recipient", sender="", id_field="id", timeout_s=1
    )
    with pytest.raises(TransientDeliveryError):
        sender.send(MESSAGE)
    sender.close()


def test_each_http_channel_sends_its_own_provider_settings_and_push_carries_no_sms_sender(provider):
    # Given both HTTP providers configured, each payload mapping a `from` field to the sender value
    settings = get_settings().model_copy(
        update={
            "sms_backend": "http",
            "sms_provider_url": f"{provider.url}/sms",
            "sms_provider_api_key": "sms-key",
            "sms_sender": "CourierSMS",
            "sms_payload_fields": "to:recipient,body:text,from:sender",
            "push_backend": "http",
            "push_provider_url": f"{provider.url}/push",
            "push_provider_api_key": "push-key",
            "push_payload_fields": "to:recipient,body:text,from:sender",
        }
    )
    # When a text and a push message are sent through the configured backends
    for channel, recipient in (("sms", "+4915100000001"), ("push", "device-token-1")):
        sender = sender_for(channel, settings)
        sender.send(
            OutgoingMessage(reference=f"{channel}-1", channel=channel, recipient=recipient, subject="", text="hi")
        )
        sender.close()
    # Then each provider got its own key, and only the SMS carries the SMS sender id (push has no sender)
    sms, push = sorted(provider.calls, key=lambda call: call.path, reverse=True)
    assert (sms.path, sms.headers["Authorization"]) == ("/sms", "Bearer sms-key")
    assert sms.body == {"to": "+4915100000001", "body": "hi", "from": "CourierSMS"}
    assert (push.path, push.headers["Authorization"]) == ("/push", "Bearer push-key")
    assert push.body == {"to": "device-token-1", "body": "hi"}
