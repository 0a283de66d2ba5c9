"""Identity: accounts, one-time tokens, MFA codes, sessions and devices. Keyword-only, session first.

Every change that the audit trail records is recorded here, in the same transaction as the change.
Plain tokens and codes are returned to the caller (an identity task) and never stored or logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.access.schemas import Principal
from app.audit import service as audit_service
from app.config import get_settings
from app.db import utcnow
from app.events import service as events
from app.identity import secrets
from app.identity.exceptions import EmailTaken, NoPhone, UserNotFound
from app.identity.models import MfaCode, OneTimeToken, PushDevice, TokenPurpose, User, UserSession
from app.identity.schemas import UserCreate

logger = logging.getLogger(__name__)

Actor = Principal | str


def user_target(user_id: int) -> str:
    """The audit target of a user."""
    return f"user:{user_id}"


def get(*, session: Session, user_id: int) -> User:
    """One user, or UserNotFound."""
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


def get_by_email(*, session: Session, email: str) -> User | None:
    """The user with this address (compared lowercased), if any."""
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def create(*, session: Session, user_in: UserCreate, actor: Actor) -> User:
    """Create an account (unverified) and record `identity.user.create`.

    The one place `user.created` happens: the event emitter (app/events) is wired here.
    """
    if get_by_email(session=session, email=user_in.email) is not None:
        raise EmailTaken()
    user = User(
        email=user_in.email,
        phone=user_in.phone,
        display_name=user_in.display_name,
        password_hash=secrets.hash_password(user_in.password) if user_in.password else None,
        locale=user_in.locale,
        mfa_enabled=user_in.mfa_enabled,
        verified=False,
    )
    session.add(user)
    session.flush()
    audit_service.record(
        session=session, actor=actor, action="identity.user.create", target=user_target(user.id), outcome="success"
    )
    events.emit(
        session,
        "user.created",
        {"user_id": user.id, "email": user.email, "display_name": user.display_name, "locale": user.locale},
    )
    return user


def request_password_reset(*, session: Session, email: str, actor: Actor, client_address: str | None) -> User | None:
    """Record a password-reset request for `email`; returns the user when the address is known.

    The one place `password.reset_requested` happens: the event emitter (app/events) is wired here. The caller
    answers the same way whether or not a user was found (no account enumeration).
    """
    user = get_by_email(session=session, email=email)
    target = user_target(user.id) if user else f"email:{secrets.email_digest(email)}"
    audit_service.record(
        session=session,
        actor=actor,
        action="identity.password_reset.request",
        target=target,
        outcome="success",
        details={"client_address": client_address, "known": user is not None},
    )
    # Emitted for unknown addresses too (user_id null), so the request costs the same either way; never a token.
    events.emit(session, "password.reset_requested", {"user_id": user.id if user else None, "target": target})
    return user


def issue_token(*, session: Session, user: User, purpose: TokenPurpose) -> str:
    """Make a one-time token for `user`, store its hash, and retire earlier unused tokens of the same purpose.

    Returns the plain token, which only the calling task ever holds.
    """
    now = utcnow()
    ttl = (
        get_settings().password_reset_token_ttl_s
        if purpose is TokenPurpose.password_reset
        else get_settings().email_verification_token_ttl_s
    )
    session.execute(
        update(OneTimeToken)
        .where(OneTimeToken.user_id == user.id, OneTimeToken.purpose == purpose, OneTimeToken.used_at.is_(None))
        .values(expires_at=now)
    )
    plain = secrets.new_token()
    session.add(
        OneTimeToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=secrets.digest(plain),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
    )
    session.flush()
    return plain


def _consume_token(*, session: Session, token: str, purpose: TokenPurpose) -> OneTimeToken | None:
    """Mark a valid token used and return it; None when unknown, used, expired or of another purpose."""
    row = session.scalar(select(OneTimeToken).where(OneTimeToken.token_hash == secrets.digest(token)).with_for_update())
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= utcnow():
        return None
    row.used_at = utcnow()
    return row


def confirm_password_reset(*, session: Session, token: str, new_password: str, actor: Actor) -> tuple[User, int] | None:
    """Set a new password with a reset token (single use, expiry enforced) and revoke every session.

    Returns (user, sessions revoked), or None for an invalid token; both outcomes are audited.
    """
    row = _consume_token(session=session, token=token, purpose=TokenPurpose.password_reset)
    if row is None:
        audit_service.record(
            session=session, actor=actor, action="identity.password_reset.confirm", target=None, outcome="failure"
        )
        return None
    user = get(session=session, user_id=row.user_id)
    user.password_hash = secrets.hash_password(new_password)
    revoked = revoke_sessions(session=session, user_id=user.id)
    audit_service.record(
        session=session,
        actor=actor,
        action="identity.password_reset.confirm",
        target=user_target(user.id),
        outcome="success",
        details={"sessions_revoked": revoked},
    )
    return user, revoked


def verify_email(*, session: Session, token: str, actor: Actor) -> User | None:
    """Mark the user's address verified with a verification token; None (audited as failure) when invalid."""
    row = _consume_token(session=session, token=token, purpose=TokenPurpose.email_verification)
    if row is None:
        audit_service.record(
            session=session, actor=actor, action="identity.email.verify", target=None, outcome="failure"
        )
        return None
    user = get(session=session, user_id=row.user_id)
    user.verified = True
    audit_service.record(
        session=session, actor=actor, action="identity.email.verify", target=user_target(user.id), outcome="success"
    )
    return user


def require_phone(*, session: Session, user_id: int) -> User:
    """The user, who must have a phone number for MFA codes."""
    user = get(session=session, user_id=user_id)
    if not user.phone:
        raise NoPhone(user_id)
    return user


def record_mfa_challenge(*, session: Session, user: User, actor: Actor) -> None:
    """Audit an MFA challenge (the code itself is made by the sending task)."""
    audit_service.record(
        session=session, actor=actor, action="identity.mfa.challenge", target=user_target(user.id), outcome="success"
    )


def issue_mfa_code(*, session: Session, user: User) -> str:
    """Make an MFA code, store its hash (expiry, attempts), retire earlier codes; returns the plain code."""
    now = utcnow()
    session.execute(update(MfaCode).where(MfaCode.user_id == user.id, MfaCode.used_at.is_(None)).values(expires_at=now))
    plain = secrets.new_code()
    session.add(
        MfaCode(
            user_id=user.id,
            code_hash=secrets.digest(plain),
            created_at=now,
            expires_at=now + timedelta(seconds=get_settings().mfa_code_ttl_s),
            attempts=0,
        )
    )
    session.flush()
    return plain


@dataclass(frozen=True)
class MfaResult:
    """The outcome of an MFA verification: `verified`, `wrong` or `expired`.

    `exhausted_code_id` is set when this wrong guess used up the code's last attempt (a security alert).
    """

    status: str
    attempts_left: int = 0
    session_token: str | None = None
    expires_at: datetime | None = None
    exhausted_code_id: int | None = None


def verify_mfa(*, session: Session, user_id: int, code: str, actor: Actor) -> MfaResult:
    """Check `code` against the user's current MFA code (5 attempts, 5-minute expiry by default).

    A right code is used up and opens a session; every outcome is audited as `identity.mfa.verify`.
    """
    user = get(session=session, user_id=user_id)
    now, limit = utcnow(), get_settings().mfa_max_attempts
    current = session.scalar(
        select(MfaCode)
        .where(MfaCode.user_id == user.id, MfaCode.used_at.is_(None), MfaCode.expires_at > now)
        .order_by(MfaCode.id.desc())
        .limit(1)
        .with_for_update()
    )
    target = user_target(user.id)
    if current is None or current.attempts >= limit:
        audit_service.record(
            session=session,
            actor=actor,
            action="identity.mfa.verify",
            target=target,
            outcome="failure",
            details={"reason": "no valid code"},
        )
        return MfaResult(status="expired")
    current.attempts += 1
    if not secrets.matches(code, current.code_hash):
        left = limit - current.attempts
        audit_service.record(
            session=session,
            actor=actor,
            action="identity.mfa.verify",
            target=target,
            outcome="failure",
            details={"reason": "wrong code", "attempts_left": left},
        )
        return MfaResult(status="wrong", attempts_left=left, exhausted_code_id=current.id if left == 0 else None)
    current.used_at = now
    token, expires_at = open_session(session=session, user=user)
    audit_service.record(session=session, actor=actor, action="identity.mfa.verify", target=target, outcome="success")
    return MfaResult(status="verified", session_token=token, expires_at=expires_at)


def open_session(*, session: Session, user: User) -> tuple[str, datetime]:
    """Open a session; returns its plain token (shown once) and expiry."""
    plain = secrets.new_token()
    expires_at = utcnow() + timedelta(seconds=get_settings().session_ttl_s)
    session.add(UserSession(user_id=user.id, token_hash=secrets.digest(plain), expires_at=expires_at))
    session.flush()
    return plain, expires_at


def revoke_sessions(*, session: Session, user_id: int) -> int:
    """Revoke every live session of a user; returns how many."""
    now = utcnow()
    result = session.execute(
        update(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None), UserSession.expires_at > now)
        .values(revoked_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def add_device(*, session: Session, user_id: int, token: str, platform: str) -> PushDevice:
    """Register a push device for a user (re-registering a token moves it to this user)."""
    get(session=session, user_id=user_id)
    device = session.scalar(select(PushDevice).where(PushDevice.token == token))
    if device is None:
        device = PushDevice(user_id=user_id, token=token, platform=platform)
        session.add(device)
    else:
        device.user_id, device.platform = user_id, platform
    session.flush()
    return device


def devices(*, session: Session, user_id: int) -> list[PushDevice]:
    """A user's push devices."""
    return list(session.scalars(select(PushDevice).where(PushDevice.user_id == user_id).order_by(PushDevice.id)))


def cleanup_expired_sessions(*, session: Session) -> int:
    """Delete sessions that expired or were revoked more than a day ago; returns how many."""
    cutoff = utcnow() - timedelta(days=1)
    result = session.execute(
        delete(UserSession).where(or_(UserSession.expires_at < utcnow(), UserSession.revoked_at < cutoff))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cleanup_expired_tokens(*, session: Session) -> int:
    """Delete one-time tokens and MFA codes that expired or were used; returns how many."""
    now = utcnow()
    tokens = session.execute(
        delete(OneTimeToken).where(or_(OneTimeToken.expires_at < now, OneTimeToken.used_at.is_not(None)))
    )
    codes = session.execute(delete(MfaCode).where(or_(MfaCode.expires_at < now, MfaCode.used_at.is_not(None))))
    return int(tokens.rowcount or 0) + int(codes.rowcount or 0)  # type: ignore[attr-defined]
