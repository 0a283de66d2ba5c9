"""Pydantic schemas of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.notifications.schemas import EMAIL_PATTERN, PHONE_PATTERN
from app.schema_types import Id

PASSWORD_RULE = {"min_length": 10, "max_length": 200, "description": "At least 10 characters."}


def _email(value: str) -> str:
    value = value.strip().lower()
    if not EMAIL_PATTERN.match(value) or len(value) > 320:
        raise ValueError("not an email address")
    return value


#: An email address, stored and compared lowercased.
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_email)]


class UserCreate(BaseModel):
    """A new account; a verification email goes to `email`."""

    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    display_name: str = Field(min_length=1, max_length=200)
    phone: str | None = Field(default=None, description="E.164, e.g. +4915112345678; needed for MFA codes.")
    password: str | None = Field(default=None, **PASSWORD_RULE)  # type: ignore[call-overload]
    locale: str = Field(default="en", min_length=2, max_length=20)
    mfa_enabled: StrictBool = False

    @field_validator("phone")
    @classmethod
    def _check_phone(cls, value: str | None) -> str | None:
        if value is not None and not PHONE_PATTERN.match(value):
            raise ValueError("not an E.164 phone number (+<country><number>)")
        return value


class UserRead(BaseModel):
    """An account as the API shows it (never a secret)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    phone: str | None
    display_name: str
    verified: bool
    mfa_enabled: bool
    locale: str
    created_at: datetime


class UserCreated(BaseModel):
    """The 202 answer of a sign-up: the user, and the task sending the verification email."""

    user: UserRead
    task_id: str
    status_url: str


class TokenConfirm(BaseModel):
    """A one-time token from an emailed link."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=10, max_length=200)


class PasswordResetRequest(BaseModel):
    """Ask for a password-reset email."""

    model_config = ConfigDict(extra="forbid")

    email: EmailAddress


class PasswordResetConfirm(TokenConfirm):
    """Set a new password with the token from the reset email."""

    new_password: str = Field(**PASSWORD_RULE)  # type: ignore[call-overload]


class MfaChallenge(BaseModel):
    """Send an MFA code by SMS to a user."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id


class MfaVerify(MfaChallenge):
    """Check a code the user typed."""

    code: str = Field(pattern=r"^[0-9]{6}$")


class DeviceCreate(BaseModel):
    """A push device of a user (the push provider's device token)."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=8, max_length=500)
    platform: str = Field(default="unknown", max_length=20)


class DeviceRead(BaseModel):
    """A registered push device."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    platform: str
    created_at: datetime


class Confirmed(BaseModel):
    """A confirmation that worked."""

    status: str
    user_id: int
    sessions_revoked: int | None = None


class MfaVerified(BaseModel):
    """A verified code: the session it opened (the token is shown once; only its hash is kept)."""

    status: str
    user_id: int
    session_token: str
    expires_at: datetime
