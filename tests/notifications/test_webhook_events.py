"""Identity and notification events reach subscribed webhooks: `user.created`, `password.reset_requested`
(for known and unknown addresses alike, never with a token) and `notification.failed`."""

from __future__ import annotations

import uuid
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.support.api import auth, register
from tests.support.session import join

TYPES = ["user.created", "password.reset_requested", "notification.failed"]


def test_identity_and_notification_events_are_announced_to_subscribers(
    api,
    admin_key,
    client_key,
    delivered,
    receiver,  # noqa: F811
):
    # Given an endpoint subscribed to the three events
    server = receiver()
    endpoint = register(api, admin_key, server.url, TYPES)
    verify = Webhook(endpoint["secret"])
    # When a user signs up, a reset is asked for their address and for an unknown one, and a push fails for good
    email = f"hooked-{uuid.uuid4().hex[:6]}@example.com"
    created = api.post(
        "/api/v1/identity/users", json={"email": email, "display_name": "Hook"}, headers=auth(client_key)
    )
    assert created.status_code == 202, created.text
    user_id = created.json()["user"]["id"]
    for address in (email, f"nobody-{uuid.uuid4().hex[:6]}@example.com"):
        asked = api.post("/api/v1/identity/password-reset", json={"email": address}, headers=auth(client_key))
        assert asked.status_code == 202
    delivered.provider.script["/push"] = [(400, {"error": "unknown device token"})]
    push = api.post(
        "/api/v1/notifications",
        json={"channel": "push", "recipient": "device-" + uuid.uuid4().hex, "subject": "Hi", "body": "x"},
        headers=auth(client_key),
    )
    assert push.status_code == 202
    # Then four signed deliveries arrive, one per event
    join(lambda: len(server.received) >= 4, timeout=60, what="four deliveries")
    payloads: list[dict[str, Any]] = [verify.verify(r.body, r.headers) for r in server.received]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for payload in payloads:
        by_type.setdefault(payload["type"], []).append(payload["data"])
    assert by_type["user.created"] == [
        {"user_id": user_id, "email": email, "display_name": "Hook", "locale": by_type["user.created"][0]["locale"]}
    ]
    resets = sorted(by_type["password.reset_requested"], key=lambda d: d["user_id"] is None)
    assert resets[0]["user_id"] == user_id and resets[1]["user_id"] is None
    assert all(set(d) == {"user_id", "target"} for d in resets)  # no token, no address in clear
    (failed,) = by_type["notification.failed"]
    assert failed["notification_id"] == push.json()["notification_id"] and failed["channel"] == "push"
    assert "400" in failed["error"] and failed["retryable"] is False
