"""SQL tables of identity: users, their sessions, one-time tokens, MFA codes and push devices.

Secrets (passwords, tokens, MFA codes, session tokens) are stored only as hashes; see app/identity/secrets.py.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, utcnow


class TokenPurpose(StrEnum):
    """What a one-time token proves."""

    password_reset = "password_reset"
    email_verification = "email_verification"


class User(TimestampMixin, Base):
    """An account. `email` is stored lowercased and is unique."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(200))
    #: scrypt hash (`scrypt$n$r$p$salt$hash`); None until a password is set.
    password_hash: Mapped[str | None] = mapped_column(String(300))
    verified: Mapped[bool] = mapped_column(default=False)
    mfa_enabled: Mapped[bool] = mapped_column(default=False)
    locale: Mapped[str] = mapped_column(String(20), default="en")


class UserSession(Base):
    """A signed-in session; revoked on password reset."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class OneTimeToken(Base):
    """A password-reset or email-verification token: hashed, expiring, single use."""

    __tablename__ = "one_time_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[TokenPurpose] = mapped_column(String(30))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_one_time_tokens_expires_at", "expires_at"),)


class MfaCode(Base):
    """A one-time MFA code sent by SMS: hashed, expiring, with a bounded number of attempts."""

    __tablename__ = "mfa_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None]


class PushDevice(Base):
    """A device that receives push notifications for a user (the provider's device token)."""

    __tablename__ = "push_devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(500), unique=True)
    platform: Mapped[str] = mapped_column(String(20), default="unknown")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
