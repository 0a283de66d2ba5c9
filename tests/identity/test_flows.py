"""Sign-up, email verification and password reset, followed end to end through a real SMTP server."""

from __future__ import annotations

import re
import statistics
import time
import uuid

from app.db import session_scope
from app.identity import secrets
from app.identity import service as identity_service
from app.identity.models import OneTimeToken, UserSession
from tests.support.api import auth
from tests.support.delivery import Delivery, MessageTap, database_dump, log_dump, redis_dump, token_in
from tests.support.session import join


def _address() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def _sign_up(api, key, email, **extra):
    body = {"email": email, "display_name": "Ada", "password": "correct horse battery", **extra}
    response = api.post("/api/v1/identity/users", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


def _mail_to(stack: Delivery, email: str, count: int = 1):
    return join(lambda: len(stack.inbox.to(email)) >= count and stack.inbox.to(email), what=f"mail to {email}")


def _task_state(api, key, task_id):
    return api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(key)).json()["state"]


def test_a_new_user_verifies_the_address_with_the_emailed_link_once(api, client_key, delivered):
    # Given a user created through the API
    email = _address()
    created = _sign_up(api, client_key, email)
    assert created["user"]["verified"] is False and set(created) == {"user", "task_id", "status_url"}
    # When the verification email arrives over SMTP (text and HTML)
    [message] = _mail_to(delivered, email)
    assert message["Subject"] == "Verify your email address"
    assert message.get_body(("html",)) is not None
    token = token_in(message)
    # Then its token verifies the address once
    first = api.post("/api/v1/identity/verify-email/confirm", json={"token": token}, headers=auth(client_key))
    assert first.status_code == 200, first.text
    user = api.get(f"/api/v1/identity/users/{created['user']['id']}", headers=auth(client_key)).json()
    assert user["verified"] is True
    # And not a second time
    again = api.post("/api/v1/identity/verify-email/confirm", json={"token": token}, headers=auth(client_key))
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"


def test_the_reset_link_sets_a_new_password_once_and_revokes_every_session(api, client_key, delivered):
    # Given a user with two open sessions
    email = _address()
    user_id = _sign_up(api, client_key, email)["user"]["id"]
    with session_scope() as session:
        user = identity_service.get(session=session, user_id=user_id)
        identity_service.open_session(session=session, user=user)
        identity_service.open_session(session=session, user=user)
    # When a reset is requested and its email arrives
    response = api.post("/api/v1/identity/password-reset", json={"email": email.upper()}, headers=auth(client_key))
    assert response.status_code == 202, response.text
    reset = join(
        lambda: [m for m in delivered.inbox.to(email) if m["Subject"] == "Reset your password"], what="reset mail"
    )
    token = token_in(reset[0])
    # Then the token sets a new password, revoking both sessions
    body = {"token": token, "new_password": "a much better passphrase"}
    first = api.post("/api/v1/identity/password-reset/confirm", json=body, headers=auth(client_key))
    assert first.status_code == 200, first.text
    assert first.json() == {"status": "password_changed", "user_id": user_id, "sessions_revoked": 2}
    with session_scope() as session:
        user = identity_service.get(session=session, user_id=user_id)
        assert user.password_hash and secrets.check_password("a much better passphrase", user.password_hash)
        live = session.query(UserSession).filter_by(user_id=user_id, revoked_at=None).count()
        assert live == 0
    # And the same token is refused the second time
    again = api.post("/api/v1/identity/password-reset/confirm", json=body, headers=auth(client_key))
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"


def test_an_expired_reset_token_is_refused(api, client_key, delivered):
    email = _address()
    _sign_up(api, client_key, email)
    api.post("/api/v1/identity/password-reset", json={"email": email}, headers=auth(client_key))
    token = token_in(join(lambda: [m for m in delivered.inbox.to(email) if "Reset" in m["Subject"]], what="mail")[0])
    # Given the token's expiry has passed
    with session_scope() as session:
        row = session.query(OneTimeToken).filter_by(token_hash=secrets.digest(token)).one()
        row.expires_at = row.created_at
    # Then it is refused
    body = {"token": token, "new_password": "a much better passphrase"}
    response = api.post("/api/v1/identity/password-reset/confirm", json=body, headers=auth(client_key))
    assert response.status_code == 400


def test_the_reset_token_is_found_nowhere_but_in_the_email(api, client_key, delivered):
    # Given a tap on every exchange tasks are published to
    tap = MessageTap()
    try:
        email = _address()
        _sign_up(api, client_key, email)
        _mail_to(delivered, email)
        # When a reset is requested, its email arrives and the history has recorded the task
        response = api.post("/api/v1/identity/password-reset", json={"email": email}, headers=auth(client_key))
        task_id = response.json()["task_id"]
        mails = join(lambda: [m for m in delivered.inbox.to(email) if "Reset" in m["Subject"]], what="reset mail")
        token = token_in(mails[0])
        join(lambda: _task_state(api, client_key, task_id) == "SUCCESS", what="the reset task to succeed")
        from app.runs.models import TaskRun

        def recorded() -> bool:
            with session_scope() as session:
                run = session.get(TaskRun, task_id)
                return run is not None and run.state == "SUCCESS"

        join(recorded, what="the run history to record the reset task")
        messages = tap.drain()
    finally:
        tap.close()
    # Then the task's message was captured (the search is not vacuous) ...
    assert any(task_id in m for m in messages)
    # ... and the token is in no message, no Redis key or value, no log line and no table (history, dead
    # letters, audit, notifications); only its HMAC is stored
    assert len(token) >= 40
    assert not [m for m in messages if token in m]
    assert token not in redis_dump()
    assert token not in log_dump(delivered.worker)
    assert token not in database_dump()
    assert secrets.digest(token) in database_dump()
    # And the task's result says nothing about the account
    result = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(client_key)).json()["result"]
    assert result == {"accepted": True}


def test_reset_answers_for_known_and_unknown_addresses_look_alike(api, client_key, delivered):
    # Given one address with an account and one without
    known = _address()
    _sign_up(api, client_key, known)
    unknown = _address()

    def ask(address):
        started = time.perf_counter()
        response = api.post("/api/v1/identity/password-reset", json={"email": address}, headers=auth(client_key))
        return response, time.perf_counter() - started

    # When both are asked for a reset (alternating, up to the hourly limit of each address)
    known_answers, unknown_answers = [], []
    for _ in range(5):
        known_answers.append(ask(known))
        unknown_answers.append(ask(unknown))
    # Then the status, the fields and their types are the same; only the fresh ids differ
    for (k, _), (u, _) in zip(known_answers, unknown_answers, strict=True):
        assert k.status_code == u.status_code == 202
        assert {f: type(v) for f, v in k.json().items()} == {f: type(v) for f, v in u.json().items()}
        assert set(k.headers) - {"x-request-id"} == set(u.headers) - {"x-request-id"}
    # And the two take comparable time (medians within a factor of three of each other)
    k_median = statistics.median(t for _, t in known_answers)
    u_median = statistics.median(t for _, t in unknown_answers)
    assert k_median < 3 * u_median and u_median < 3 * k_median, (k_median, u_median)
    # And both tasks end with the same result
    results = []
    for response, _ in (known_answers[0], unknown_answers[0]):
        task_id = response.json()["task_id"]
        join(lambda t=task_id: _task_state(api, client_key, t) == "SUCCESS", what="reset task")
        results.append(api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(client_key)).json()["result"])
    assert results[0] == results[1]


def test_reset_requests_are_limited_per_address_with_retry_after(api, client_key):
    # Given an address that was asked for five resets this hour (the limit)
    email = _address()
    for _ in range(5):
        assert (
            api.post("/api/v1/identity/password-reset", json={"email": email}, headers=auth(client_key)).status_code
            == 202
        )
    # When a sixth is asked
    response = api.post("/api/v1/identity/password-reset", json={"email": email}, headers=auth(client_key))
    # Then it is refused with 429 and a Retry-After within the hour
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    assert response.json()["error"]["code"] == "rate_limited"


def test_sign_up_honours_the_idempotency_key(api, client_key, delivered):
    email = _address()
    body = {"email": email, "display_name": "Ada", "password": "correct horse battery"}
    headers = {**auth(client_key), "Idempotency-Key": uuid.uuid4().hex}
    first = api.post("/api/v1/identity/users", json=body, headers=headers)
    second = api.post("/api/v1/identity/users", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    other = api.post("/api/v1/identity/users", json={**body, "display_name": "Bob"}, headers=headers)
    assert other.status_code == 422
    # And only one verification email went out
    _mail_to(delivered, email)
    join(lambda: _task_state(api, client_key, first.json()["task_id"]) == "SUCCESS", what="verification task")
    assert len(delivered.inbox.to(email)) == 1


def test_bad_identity_input_gets_a_clear_4xx(api, client_key):
    cases = [
        ("/api/v1/identity/users", {"email": "not-an-address", "display_name": "x"}),
        ("/api/v1/identity/users", {"email": _address(), "display_name": "x", "password": "short"}),
        ("/api/v1/identity/password-reset", {"email": 5}),
        ("/api/v1/identity/password-reset/confirm", {"token": "x" * 20, "new_password": "tiny"}),
        ("/api/v1/identity/mfa/verify", {"user_id": 1, "code": "12"}),
    ]
    for path, body in cases:
        response = api.post(path, json=body, headers=auth(client_key))
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    assert api.post("/api/v1/identity/password-reset", json={"email": _address()}).status_code == 401


TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_\-]{43}")


def test_a_dead_lettered_reset_leaves_its_token_in_no_dead_letter_message_log_or_table(
    api, client_key, admin_key, delivered
):
    # Given a user whose mail server refuses the reset email for good
    email = _address()
    user_id = _sign_up(api, client_key, email)["user"]["id"]
    _mail_to(delivered, email)
    delivered.inbox.reject[email] = "550 5.1.1 Mailbox disabled"
    tap = MessageTap()
    try:
        # When a reset is requested and the task ends in the dead-letter store
        task_id = api.post("/api/v1/identity/password-reset", json={"email": email}, headers=auth(client_key)).json()[
            "task_id"
        ]
        letter = join(
            lambda: api.get("/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(admin_key)).json()[
                "items"
            ],
            timeout=60,
            what="the reset task's dead letter",
        )
        messages = tap.drain()
    finally:
        tap.close()
    full = api.get(f"/api/v1/tasks/dead-letters/{letter[0]['id']}", headers=auth(admin_key)).text
    # Then a token was made (its hash is stored) ...
    with session_scope() as session:
        stored = {
            row.token_hash for row in session.query(OneTimeToken).filter_by(user_id=user_id, purpose="password_reset")
        }
    assert stored
    # ... and no token-shaped string anywhere (the dead letter, the messages that reached the dead-letter
    # exchange, Redis, the logs, every table) hashes to it
    haystack = "\n".join([full, *messages, redis_dump(), log_dump(delivered.worker), database_dump()])
    assert any("dead" in m or task_id in m for m in messages)
    assert not {secrets.digest(candidate) for candidate in TOKEN_SHAPED.findall(haystack)} & stored
