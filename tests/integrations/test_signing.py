"""Standard Webhooks v1 signatures, checked with an independent verifier (the `standardwebhooks` package)."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.integrations import signing


def test_a_generated_secret_is_whsec_and_base64_of_32_bytes():
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.generate_secret() != secret


def test_an_independent_verifier_accepts_our_signature_and_rejects_a_changed_body():
    # Given a secret and a signed delivery
    secret = signing.generate_secret()
    body = b'{"type":"report.ready","timestamp":"2026-11-24T06:00:00+00:00","data":{"report_id":1}}'
    headers = signing.headers([secret], "msg_abc", int(time.time()), body)
    # When the Standard Webhooks library verifies it, Then it is accepted
    assert Webhook(secret).verify(body, headers) == {
        "type": "report.ready",
        "timestamp": "2026-11-24T06:00:00+00:00",
        "data": {"report_id": 1},
    }
    # And a body changed in transit is refused
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1}", b"2}"), headers)


def test_during_a_rotation_both_the_old_and_the_new_secret_verify():
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b'{"type":"x.y","timestamp":"t","data":{}}'
    headers = signing.headers([new, old], "msg_rot", int(time.time()), body)
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)


def test_our_own_verify_agrees_with_the_library():
    secret = signing.generate_secret()
    now = int(time.time())
    header = signing.headers([secret], "msg_1", now, b"{}")["webhook-signature"]
    assert signing.verify(secret, "msg_1", now, b"{}", header)
    assert not signing.verify(secret, "msg_2", now, b"{}", header)
