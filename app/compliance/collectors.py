"""GDPR subject access: a registry of per-domain collectors, each returning what its domain holds about one
user. A domain registers its collector here; the export runs them all, in registration order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.audit import chain
from app.audit.models import AuditEvent
from app.identity.models import MfaCode, OneTimeToken, PushDevice, User, UserSession
from app.notifications.models import Notification


@dataclass(frozen=True)
class Subject:
    """Whose data is exported: a user id, and the e-mail address when known (some entries name only that)."""

    user_id: int
    email: str | None = None


#: (section name, collector) pairs; a collector returns a JSON-ready list of records.
Collector = Callable[[Session, Subject], list[dict[str, Any]]]
COLLECTORS: list[tuple[str, Collector]] = []


def register(section: str) -> Callable[[Collector], Collector]:
    """Decorator: add a collector under `section` of the export."""

    def add(collector: Collector) -> Collector:
        COLLECTORS.append((section, collector))
        return collector

    return add


def email_target(email: str) -> str:
    """The audit target that names an e-mail address without storing it: `email:` + 16 hex of its SHA-256."""
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


@register("audit_entries")
def audit_entries(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """Every audit entry about the user (target `user:<id>`, or their e-mail's hashed target)."""
    targets = [f"user:{subject.user_id}"]
    if subject.email:
        targets.append(email_target(subject.email))
    query = select(AuditEvent).where(or_(*(AuditEvent.target == t for t in targets))).order_by(AuditEvent.id)
    return [chain.as_record(event) for event in session.scalars(query)]


def _row(obj: Any, *columns: str) -> dict[str, Any]:
    return {name: _jsonable(getattr(obj, name)) for name in columns}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@register("profile")
def profile(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """The account (never its password hash)."""
    user = session.get(User, subject.user_id)
    if user is None:
        return []
    return [
        {
            **_row(user, "id", "email", "phone", "display_name", "verified", "mfa_enabled", "locale"),
            **_row(user, "created_at", "updated_at"),
            "has_password": user.password_hash is not None,
        }
    ]


@register("sessions")
def sessions(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """Signed-in sessions (never their token hashes)."""
    rows = session.scalars(select(UserSession).where(UserSession.user_id == subject.user_id).order_by(UserSession.id))
    return [_row(r, "id", "created_at", "expires_at", "revoked_at") for r in rows]


@register("one_time_tokens")
def one_time_tokens(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """Password-reset and e-mail verification tokens issued (when, what for, whether used; never the token)."""
    rows = session.scalars(
        select(OneTimeToken).where(OneTimeToken.user_id == subject.user_id).order_by(OneTimeToken.id)
    )
    return [_row(r, "id", "purpose", "created_at", "expires_at", "used_at") for r in rows]


@register("mfa_codes")
def mfa_codes(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """MFA codes sent (when, attempts, whether used; never the code)."""
    rows = session.scalars(select(MfaCode).where(MfaCode.user_id == subject.user_id).order_by(MfaCode.id))
    return [_row(r, "id", "created_at", "expires_at", "attempts", "used_at") for r in rows]


@register("push_devices")
def push_devices(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """Devices registered for push notifications."""
    rows = session.scalars(select(PushDevice).where(PushDevice.user_id == subject.user_id).order_by(PushDevice.id))
    return [_row(r, "id", "platform", "token", "created_at") for r in rows]


@register("notifications")
def notifications(session: Session, subject: Subject) -> list[dict[str, Any]]:
    """Messages sent to the user's e-mail address, phone or devices (the stored text; secrets are never stored)."""
    user = session.get(User, subject.user_id)
    recipients = {subject.email} if subject.email else set()
    if user is not None:
        recipients |= {user.email, *([user.phone] if user.phone else [])}
        recipients |= set(session.scalars(select(PushDevice.token).where(PushDevice.user_id == user.id)))
    if not recipients:
        return []
    rows = session.scalars(
        select(Notification).where(Notification.recipient.in_(sorted(recipients))).order_by(Notification.id)
    )
    columns = ("id", "channel", "recipient", "subject", "body", "template", "status", "created_at", "sent_at")
    return [_row(r, *columns) for r in rows]


def enrich(*, session: Session, subject: Subject) -> Subject:
    """The subject with the account's e-mail address when none was given (audit entries may name only that)."""
    if subject.email:
        return subject
    user = session.get(User, subject.user_id)
    return Subject(subject.user_id, user.email) if user is not None else subject


def collect(*, session: Session, subject: Subject) -> dict[str, list[dict[str, Any]]]:
    """Run every collector: the export's sections."""
    subject = enrich(session=session, subject=subject)
    return {section: collector(session, subject) for section, collector in COLLECTORS}
