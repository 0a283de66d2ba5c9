"""Identity service rules that need no worker: hashing, token retirement, cleanup."""

from __future__ import annotations

import uuid
from datetime import timedelta

from app.db import session_scope, utcnow
from app.identity import secrets
from app.identity import service as identity_service
from app.identity.models import MfaCode, OneTimeToken, TokenPurpose, UserSession
from app.identity.schemas import UserCreate


def _user(session):
    user_in = UserCreate(email=f"svc-{uuid.uuid4().hex[:8]}@Example.com", display_name="S", password="long enough pw")
    return identity_service.create(session=session, user_in=user_in, actor="test")


def test_passwords_and_tokens_are_stored_only_as_hashes():
    with session_scope() as session:
        user = _user(session)
        token = identity_service.issue_token(session=session, user=user, purpose=TokenPurpose.password_reset)
        stored = session.query(OneTimeToken).filter_by(user_id=user.id).one()
    assert user.email == user.email.lower()
    assert "long enough pw" not in (user.password_hash or "") and secrets.check_password(
        "long enough pw", user.password_hash
    )
    assert stored.token_hash == secrets.digest(token) and token not in stored.token_hash


def test_a_new_token_retires_the_unused_one_of_the_same_purpose():
    with session_scope() as session:
        user = _user(session)
        first = identity_service.issue_token(session=session, user=user, purpose=TokenPurpose.password_reset)
        identity_service.issue_token(session=session, user=user, purpose=TokenPurpose.password_reset)
    with session_scope() as session:
        assert (
            identity_service.confirm_password_reset(
                session=session, token=first, new_password="another long pw", actor="test"
            )
            is None
        )


def test_cleanup_removes_expired_and_used_tokens_codes_and_sessions_only():
    with session_scope() as session:
        user = _user(session)
        live_token = identity_service.issue_token(session=session, user=user, purpose=TokenPurpose.email_verification)
        identity_service.issue_mfa_code(session=session, user=user)
        identity_service.open_session(session=session, user=user)
        past = utcnow() - timedelta(seconds=1)
        session.add(
            OneTimeToken(user_id=user.id, purpose="password_reset", token_hash=uuid.uuid4().hex, expires_at=past)
        )
        session.add(MfaCode(user_id=user.id, code_hash="x", expires_at=past, attempts=0))
        session.add(UserSession(user_id=user.id, token_hash=uuid.uuid4().hex, expires_at=past))
    with session_scope() as session:
        assert identity_service.cleanup_expired_tokens(session=session) >= 2
        assert identity_service.cleanup_expired_sessions(session=session) >= 1
    with session_scope() as session:
        assert session.query(OneTimeToken).filter_by(user_id=user.id).one().token_hash == secrets.digest(live_token)
        assert session.query(MfaCode).filter_by(user_id=user.id).count() == 1
        assert session.query(UserSession).filter_by(user_id=user.id).count() == 1


def test_every_identity_change_is_audited_in_its_transaction():
    from app.audit import service as audit_service

    with session_scope() as session:
        user = _user(session)
        identity_service.request_password_reset(
            session=session, email=user.email, actor="test", client_address="192.0.2.1"
        )
        identity_service.request_password_reset(
            session=session, email="nobody@example.com", actor="test", client_address=None
        )
    with session_scope() as session:
        actions = [e.action for e in audit_service.list_for_target(session=session, target=f"user:{user.id}")]
        assert actions == ["identity.user.create", "identity.password_reset.request"]
        anonymous = audit_service.list_for_target(
            session=session, target=f"email:{secrets.email_digest('nobody@example.com')}"
        )
        assert [e.details["client_address"] for e in anonymous][-1] is None
