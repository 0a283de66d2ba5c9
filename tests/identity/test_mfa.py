"""MFA codes by SMS through a local HTTP provider: verify, expiry, five attempts, and the alert after them."""

from __future__ import annotations

import re
import uuid

from app.db import session_scope
from app.identity.models import MfaCode
from tests.support.api import auth
from tests.support.delivery import ALERT_ADMIN, Delivery
from tests.support.session import join


def _user_with_phone(api, key) -> tuple[int, str]:
    phone = "+4915" + str(uuid.uuid4().int)[:9]
    body = {"email": f"mfa-{uuid.uuid4().hex[:8]}@example.com", "display_name": "Mo", "phone": phone}
    response = api.post("/api/v1/identity/users", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()["user"]["id"], phone


def _challenge(api, key, user_id):
    return api.post("/api/v1/identity/mfa/challenge", json={"user_id": user_id}, headers=auth(key))


def _code_sent_to(stack: Delivery, phone: str, count: int = 1) -> str:
    calls = join(
        lambda: len(stack.provider.to("/sms", phone)) >= count and stack.provider.to("/sms", phone),
        what=f"an SMS to {phone}",
    )
    return re.search(r"\b(\d{6})\b", calls[count - 1].body["body"]).group(1)


def _verify(api, key, user_id, code):
    return api.post("/api/v1/identity/mfa/verify", json={"user_id": user_id, "code": code}, headers=auth(key))


def test_the_texted_code_opens_a_session_once(api, client_key, delivered):
    # Given a user who asked for a code
    user_id, phone = _user_with_phone(api, client_key)
    assert _challenge(api, client_key, user_id).status_code == 202
    code = _code_sent_to(delivered, phone)
    # Then the SMS provider got it with our key for deduplication, and only the code's HMAC is stored
    call = delivered.provider.to("/sms", phone)[0]
    assert call.headers["Idempotency-Key"].startswith("notification-")
    with session_scope() as session:
        assert all(code not in row.code_hash for row in session.query(MfaCode).filter_by(user_id=user_id))
    # When the code is typed
    response = _verify(api, client_key, user_id, code)
    # Then a session is opened, and the code does not work twice
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "verified" and len(response.json()["session_token"]) > 30
    assert _verify(api, client_key, user_id, code).json()["error"]["code"] == "code_expired"


def test_five_wrong_codes_use_up_the_code_and_alert_the_user_and_the_admins(api, client_key, delivered):
    # Given a user with a fresh code
    user_id, phone = _user_with_phone(api, client_key)
    _challenge(api, client_key, user_id)
    code = _code_sent_to(delivered, phone)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    # When five wrong codes are typed
    answers = [_verify(api, client_key, user_id, wrong) for _ in range(5)]
    # Then each says how many attempts are left, and afterwards even the right code is refused
    assert [a.json()["error"]["details"]["attempts_left"] for a in answers] == [4, 3, 2, 1, 0]
    assert _verify(api, client_key, user_id, code).json()["error"]["code"] == "code_expired"
    # And a security alert reaches the admins' address by email (and the user's address)
    alerts = join(lambda: delivered.inbox.to(ALERT_ADMIN), what="the security alert email")
    assert alerts[0]["Subject"] == "Security alert: mfa_failures"
    with session_scope() as session:
        assert session.query(MfaCode).filter_by(user_id=user_id).one().attempts == 5


def test_an_expired_code_is_refused(api, client_key, delivered):
    user_id, phone = _user_with_phone(api, client_key)
    _challenge(api, client_key, user_id)
    code = _code_sent_to(delivered, phone)
    with session_scope() as session:
        row = session.query(MfaCode).filter_by(user_id=user_id).one()
        row.expires_at = row.created_at
    assert _verify(api, client_key, user_id, code).json()["error"]["code"] == "code_expired"


def test_a_new_challenge_retires_the_previous_code(api, client_key, delivered):
    user_id, phone = _user_with_phone(api, client_key)
    _challenge(api, client_key, user_id)
    first = _code_sent_to(delivered, phone)
    _challenge(api, client_key, user_id)
    second = _code_sent_to(delivered, phone, count=2)
    if first != second:
        assert _verify(api, client_key, user_id, first).status_code == 400
    assert _verify(api, client_key, user_id, second).status_code == 200


def test_mfa_challenges_are_limited_per_user_and_need_a_phone(api, client_key):
    user_id, _ = _user_with_phone(api, client_key)
    for _ in range(5):
        assert _challenge(api, client_key, user_id).status_code == 202
    refused = _challenge(api, client_key, user_id)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    # And a user without a phone, or no user, gets a clear 4xx
    body = {"email": f"nophone-{uuid.uuid4().hex[:8]}@example.com", "display_name": "No"}
    no_phone = api.post("/api/v1/identity/users", json=body, headers=auth(client_key)).json()["user"]["id"]
    assert _challenge(api, client_key, no_phone).status_code == 422
    assert _challenge(api, client_key, 10**9).status_code == 404
