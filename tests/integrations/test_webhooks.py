"""Webhook delivery end to end: a real worker delivers signed events to a local receiver that fails, throttles,
goes away and comes back; each delivery is verified with an independent Standard Webhooks implementation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from standardwebhooks.webhooks import Webhook

from app import crypto
from app.config import get_settings
from app.db import session_scope, utcnow
from app.engine import publish
from app.events import service as events
from app.events.models import WebhookDelivery, WebhookEndpoint
from app.identity.models import User
from app.integrations import webhooks
from app.notifications.models import Notification
from tests.support.api import auth, register
from tests.support.receiver import Receiver
from tests.support.session import ROOT, join


def deliveries(api: Any, key: tuple[str, str], endpoint_id: int) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/integrations/webhooks/{endpoint_id}/deliveries", headers=auth(key))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def emit(api: Any, key: tuple[str, str], type_: str, data: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/api/v1/integrations/events", json={"type": type_, "data": data}, headers=auth(key))
    assert response.status_code == 202, response.text
    return dict(response.json())


def verified(secret: str, server: Receiver) -> list[dict[str, Any]]:
    """Every request the receiver got, verified with the standardwebhooks library (raises if one is bad)."""
    return [Webhook(secret).verify(r.body, r.headers) for r in server.received]


def test_a_delivery_survives_a_500_and_a_429_with_retry_after_and_keeps_its_webhook_id(
    api, admin_key, worker, receiver
):
    # Given a receiver that fails, then throttles with Retry-After, then accepts
    server = receiver(script=[(500, {}, b"boom"), (429, {"Retry-After": "1"}, b"slow down"), (200, {}, b"thanks")])
    endpoint = register(api, admin_key, server.url + "/hooks", ["order.paid"])
    # When a client emits an event it subscribes to
    event = emit(api, admin_key, "order.paid", {"order": 17})
    assert event["deliveries"] == 1
    # Then it is delivered on the third attempt
    join(lambda: deliveries(api, admin_key, endpoint["id"])[0]["status"] == "succeeded", timeout=60, what="delivery")
    [delivery] = deliveries(api, admin_key, endpoint["id"])
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 429, 200]
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["retry", "retry", "succeeded"]
    assert delivery["attempt_log"][1]["response_excerpt"] == "slow down"
    assert all(a["latency_ms"] is not None for a in delivery["attempt_log"])
    # And every attempt was signed, verifiable elsewhere, with the same webhook-id (receivers deduplicate on it)
    payloads = verified(endpoint["secret"], server)
    assert payloads[0] == {"type": "order.paid", "timestamp": payloads[0]["timestamp"], "data": {"order": 17}}
    assert {r.headers["webhook-id"] for r in server.received} == {delivery["message_id"]}
    assert len({r.body for r in server.received}) == 1


def test_410_gone_disables_the_endpoint_and_recover_replays_what_it_missed(api, admin_key, worker, receiver):
    # Given an endpoint whose receiver answers 410 Gone
    server = receiver(script=[(410, {}, b"gone")])
    endpoint = register(api, admin_key, server.url, ["order.*", "order.paid"])
    since = utcnow() - timedelta(seconds=1)
    emit(api, admin_key, "order.paid", {"order": 1})

    def disabled() -> bool:
        return not api.get(f"/api/v1/integrations/webhooks/{endpoint['id']}", headers=auth(admin_key)).json()["enabled"]

    # Then one attempt disables the endpoint, with the reason
    join(disabled, timeout=30, what="the endpoint to be disabled")
    found = api.get(f"/api/v1/integrations/webhooks/{endpoint['id']}", headers=auth(admin_key)).json()
    assert "410" in found["disabled_reason"]
    assert len(server.received) == 1
    # And the audit trail says so
    trail = api.get(
        "/api/v1/audit/events",
        params={"action": "integrations.webhook.disable", "target": f"webhook_endpoint:{endpoint['id']}"},
        headers=auth(admin_key),
    ).json()
    assert trail["total"] == 1
    # When events happen while it is disabled, nothing is sent to it
    emit(api, admin_key, "order.paid", {"order": 2})
    # And the receiver comes back, the owner enables the endpoint and asks to recover since the outage began
    server.script = [(200, {}, b"")]
    server.received.clear()
    patched = api.patch(
        f"/api/v1/integrations/webhooks/{endpoint['id']}", json={"enabled": True}, headers=auth(admin_key)
    )
    assert patched.status_code == 200 and patched.json()["consecutive_failures"] == 0
    recovered = api.post(
        f"/api/v1/integrations/webhooks/{endpoint['id']}/recover",
        json={"since": since.isoformat()},
        headers=auth(admin_key),
    )
    assert recovered.status_code == 202, recovered.text
    assert recovered.json()["queued"] == 2
    # Then both events arrive, signed
    join(lambda: len(server.received) >= 2, timeout=30, what="both events to arrive")
    orders = sorted(p["data"]["order"] for p in verified(endpoint["secret"], server))
    assert orders == [1, 2]


def test_redeliver_sends_the_same_message_again(api, admin_key, worker, receiver):
    server = receiver(script=[(200, {}, b"")])
    endpoint = register(api, admin_key, server.url, ["invoice.sent"])
    emit(api, admin_key, "invoice.sent", {"invoice": 5})
    join(lambda: deliveries(api, admin_key, endpoint["id"])[0]["status"] == "succeeded", what="first delivery")
    [delivery] = deliveries(api, admin_key, endpoint["id"])
    response = api.post(
        f"/api/v1/integrations/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/redeliver",
        headers=auth(admin_key),
    )
    assert response.status_code == 202
    join(lambda: len(server.received) == 2, what="the redelivery")
    assert server.received[0].headers["webhook-id"] == server.received[1].headers["webhook-id"]


def test_after_a_rotation_deliveries_carry_both_signatures(api, admin_key, worker, receiver):
    server = receiver()
    endpoint = register(api, admin_key, server.url, ["thing.*"])
    rotated = api.post(f"/api/v1/integrations/webhooks/{endpoint['id']}/rotate-secret", headers=auth(admin_key))
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"] and rotated.json()["previous_secret_expires_at"]
    emit(api, admin_key, "thing.happened", {})
    join(lambda: server.received, what="the delivery")
    assert len(server.received[0].headers["webhook-signature"].split()) == 2
    verified(endpoint["secret"], server)
    verified(new_secret, server)


def _stored_secrets(endpoint_id: int) -> tuple[str, str]:
    """The signing secrets as SQL holds them."""
    with session_scope() as session:
        row = session.execute(
            text("SELECT secret, previous_secret FROM webhook_endpoints WHERE id = :id"), {"id": endpoint_id}
        ).one()
    return str(row.secret), str(row.previous_secret)


def _reencrypt(keys: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "reencrypt-secrets"],
        cwd=ROOT,
        env={**os.environ, "DATA_ENCRYPTION_KEYS": keys},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_signing_secrets_are_stored_encrypted_and_a_new_key_rewrites_them(api, admin_key, worker, receiver):
    kind = f"keys{uuid.uuid4().hex[:6]}.rotated"
    server = receiver()
    endpoint = register(api, admin_key, server.url, [kind])
    rotated = api.post(f"/api/v1/integrations/webhooks/{endpoint['id']}/rotate-secret", headers=auth(admin_key))
    new_secret = rotated.json()["secret"]
    # SQL holds neither secret in clear, only tokens the configured key opens
    stored, previous = _stored_secrets(endpoint["id"])
    assert "whsec_" not in stored + previous and new_secret not in stored
    assert (crypto.decrypt(stored), crypto.decrypt(previous)) == (new_secret, endpoint["secret"])
    # When an operator puts a new key first and re-encrypts
    configured = get_settings().data_encryption_keys
    new_key = Fernet.generate_key().decode()
    _reencrypt(f"{new_key},{configured}")
    try:
        # Then the new key alone opens them, and the old one no longer does
        stored, previous = _stored_secrets(endpoint["id"])
        assert Fernet(new_key).decrypt(stored.encode()).decode() == new_secret
        assert Fernet(new_key).decrypt(previous.encode()).decode() == endpoint["secret"]
        with pytest.raises(crypto.SecretUnreadable):
            crypto.decrypt(stored)
        # and endpoints are still listed: their secrets are not loaded for that
        assert api.get("/api/v1/integrations/webhooks", headers=auth(admin_key)).status_code == 200
        # while a worker that lacks the new key dead-letters the delivery instead of signing it with anything
        emit(api, admin_key, kind, {})

        def letter() -> list[dict[str, Any]]:
            params = {"task_name": "integrations.webhook_delivery", "error_class": "SecretUnreadable"}
            items = api.get("/api/v1/tasks/dead-letters", params=params, headers=auth(admin_key)).json()["items"]
            return list(items)

        join(letter, timeout=60, what="the delivery's dead letter")
        assert not server.received
    finally:
        _reencrypt(f"{configured},{new_key}")  # (back under the session's key)
    assert crypto.decrypt(_stored_secrets(endpoint["id"])[0]) == new_secret


def test_endpoints_in_a_row_of_permanent_failures_are_disabled(receiver):
    # Given an endpoint that answers 400 to everything (a permanent failure: no retry)
    server = receiver(script=[(400, {}, b"bad")])
    settings = get_settings()
    with session_scope() as session:
        endpoint, _ = webhooks.create(
            session=session, url=server.url, event_types=["x.y"], owner="t", settings=settings
        )
        endpoint_id = endpoint.id
    # When N deliveries fail (attempted in-process, one at a time)
    for n in range(settings.webhook_disable_after_failures):
        with session_scope() as session:
            event = events.emit(session, "x.y", {"n": n})
            session.info.clear()  # attempted here, not by a worker
            delivery_id = session.scalar(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.event_id == event.id, WebhookDelivery.endpoint_id == endpoint_id
                )
            )
        assert delivery_id is not None
        outcome = webhooks.deliver(delivery_id=delivery_id, settings=settings)
        assert outcome.status == "failed" and outcome.retry_in is None
    # Then the endpoint is disabled after the last one, and has received exactly N requests
    with session_scope() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and not endpoint.enabled
        assert endpoint.disabled_reason == f"{settings.webhook_disable_after_failures} deliveries in a row failed"
    assert len(server.received) == settings.webhook_disable_after_failures


def test_the_egress_check_runs_again_on_every_attempt(monkeypatch: pytest.MonkeyPatch, receiver):
    # Given an endpoint registered while its name resolved to the allowed local receiver
    server = receiver()
    port = server.url.rsplit(":", 1)[1]
    real = socket.getaddrinfo
    answers = {"hooks.example.com": "127.0.0.1"}

    def fake(host: Any, p: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], p))]
        return real(host, p, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = get_settings()
    with session_scope() as session:
        endpoint, _ = webhooks.create(
            session=session,
            url=f"http://hooks.example.com:{port}/",
            event_types=["dns.rebind"],
            owner="t",
            settings=settings,
        )
        event = events.emit(session, "dns.rebind", {})
        session.info.clear()
        delivery_id = session.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.event_id == event.id, WebhookDelivery.endpoint_id == endpoint.id
            )
        )
    assert delivery_id is not None
    # When the name now resolves to a private address (DNS rebinding)
    answers["hooks.example.com"] = "10.0.0.7"
    outcome = webhooks.deliver(delivery_id=delivery_id, settings=settings)
    # Then the attempt is refused before anything is sent, and not retried
    assert outcome.status == "failed"
    assert server.received == []
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None and "egress" in (delivery.last_error or "")


def test_clients_cannot_emit_courier_events_or_see_other_owners_endpoints(api, admin_key, client_key, receiver):
    server = receiver()
    response = api.post(
        "/api/v1/integrations/events", json={"type": "report.ready", "data": {}}, headers=auth(client_key)
    )
    assert response.status_code == 422
    theirs = register(api, admin_key, server.url, ["a.b"])
    assert api.get(f"/api/v1/integrations/webhooks/{theirs['id']}", headers=auth(client_key)).status_code == 404
    mine = register(api, client_key, server.url, ["a.b"])
    listed = api.get("/api/v1/integrations/webhooks", headers=auth(client_key)).json()
    assert [e["id"] for e in listed] == [mine["id"]]
    assert "secret" not in listed[0]
    huge = api.post(
        "/api/v1/integrations/events", json={"type": "a.b", "data": {"x": "y" * 70_000}}, headers=auth(client_key)
    )
    assert huge.status_code == 422
    bad = api.post(
        "/api/v1/integrations/webhooks", json={"url": server.url, "event_types": ["Bad Type"]}, headers=auth(client_key)
    )
    assert bad.status_code == 422
    assert json.loads(bad.text)["error"]["code"] == "validation_error"


def test_a_delivery_whose_publish_was_lost_is_published_by_the_sweeper(api, admin_key, worker, receiver):
    # Given a delivery committed without its task (the process died between commit and publish)
    server = receiver()
    endpoint = register(api, admin_key, server.url, ["lost.publish"])
    with session_scope() as session:
        event = events.emit(session, "lost.publish", {"n": 1})
        session.info.clear()  # the after-commit publish never happens
        session.flush()
        for delivery in session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)):
            delivery.created_at = utcnow() - timedelta(minutes=5)
    # When the sweeper runs
    publish.dispatch("integrations.dispatch_pending", kwargs={}, triggered_by="test")
    # Then the receiver gets it
    join(lambda: server.received, timeout=30, what="the swept delivery")
    assert Webhook(endpoint["secret"]).verify(server.received[0].body, server.received[0].headers)["data"] == {"n": 1}


def test_a_disabled_endpoints_owner_is_emailed(receiver):
    # Given an endpoint owned by a user, whose receiver is gone
    server = receiver(script=[(410, {}, b"")])
    settings = get_settings()
    email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope() as session:
        user = User(email=email, display_name="Owner", locale="en")
        session.add(user)
        session.flush()
        endpoint, _ = webhooks.create(
            session=session,
            url=server.url,
            event_types=["owner.test"],
            owner="t",
            settings=settings,
            owner_user_id=user.id,
        )
        event = events.emit(session, "owner.test", {})
        session.info.clear()
        delivery_id = session.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.event_id == event.id, WebhookDelivery.endpoint_id == endpoint.id
            )
        )
    assert delivery_id is not None
    # When a delivery gets 410
    assert webhooks.deliver(delivery_id=delivery_id, settings=settings).status == "failed"
    # Then the owner has an e-mail about it, through the notifications domain
    with session_scope() as session:
        [mail] = session.scalars(select(Notification).where(Notification.recipient == email)).all()
        assert mail.channel == "email" and f"endpoint {endpoint.id}" in (mail.subject or "")
        assert "410" in (mail.body or "") and mail.created_by == "integrations"
