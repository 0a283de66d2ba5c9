"""Identity workflows under /api/v1/identity: sign-up and email verification, password reset, MFA, devices."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from app import idempotency
from app.api.deps import IdempotencyKeyDep, PrincipalDep, SessionDep
from app.config import get_settings
from app.db import session_scope
from app.engine import publish
from app.errors import ServiceUnavailable, error_responses
from app.identity import ratelimit, secrets
from app.identity import service as identity_service
from app.identity.exceptions import CodeExpired, InvalidCode, InvalidToken
from app.identity.models import User
from app.identity.schemas import (
    Confirmed,
    DeviceCreate,
    DeviceRead,
    MfaChallenge,
    MfaVerified,
    MfaVerify,
    PasswordResetConfirm,
    PasswordResetRequest,
    TokenConfirm,
    UserCreate,
    UserCreated,
    UserRead,
)
from app.runs.schemas import DispatchedRead
from app.schema_types import Id

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    "/users", status_code=status.HTTP_202_ACCEPTED, response_model=UserCreated, responses=error_responses(409, 503)
)
async def create_user(
    body: UserCreate, principal: PrincipalDep, idempotency_key: IdempotencyKeyDep = None
) -> dict[str, Any]:
    """Create a user and send the verification email; 202 once the email task is confirmed."""

    async def act() -> dict[str, Any]:
        user = await run_in_threadpool(_create_user, body, principal)
        try:
            dispatched = await publish.dispatch_async(
                "identity.send_account_verification_email", kwargs={"user_id": user.id}, triggered_by=principal.name
            )
        except ServiceUnavailable:
            await run_in_threadpool(_forget_user, user.id)
            raise
        return UserCreated(user=UserRead.model_validate(user), **dispatched.as_dict()).model_dump(mode="json")

    # The password is part of the request's identity, but only as a keyed hash (never stored in Redis).
    fingerprint = {**body.model_dump(mode="json", exclude={"password"}), "password": _keyed(body.password)}
    return await idempotency.once(
        owner=principal.name, key=idempotency_key, route="identity.create_user", body=fingerprint, action=act
    )


def _keyed(value: str | None) -> str | None:
    return secrets.digest(value) if value else None


def _create_user(body: UserCreate, principal: PrincipalDep) -> User:
    with session_scope() as session:
        return identity_service.create(session=session, user_in=body, actor=principal)


def _forget_user(user_id: int) -> None:
    """Undo a sign-up whose verification email could not be dispatched (the client gets 503 and may retry)."""
    with session_scope() as session:
        user = session.get(User, user_id)
        if user is not None:
            session.delete(user)


@router.get("/users/{user_id}", response_model=UserRead, responses=error_responses(404))
def read_user(user_id: Id, session: SessionDep, _: PrincipalDep) -> User:
    """One user (verified, MFA, locale)."""
    return identity_service.get(session=session, user_id=user_id)


@router.post("/verify-email/confirm", response_model=Confirmed, responses=error_responses(400))
def confirm_email(body: TokenConfirm, principal: PrincipalDep) -> Confirmed:
    """Verify a user's email address with the token from the verification email (single use)."""
    with session_scope() as session:
        user = identity_service.verify_email(session=session, token=body.token, actor=principal)
        user_id = user.id if user else None
    if user_id is None:
        raise InvalidToken()
    return Confirmed(status="verified", user_id=user_id)


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DispatchedRead,
    responses=error_responses(409, 429, 503),
)
async def request_password_reset(
    body: PasswordResetRequest, request: Request, principal: PrincipalDep, idempotency_key: IdempotencyKeyDep = None
) -> dict[str, Any]:
    """Send a reset link if the address has an account; the same 202 either way (no account enumeration)."""
    client_address = request.client.host if request.client else None

    async def act() -> dict[str, Any]:
        await run_in_threadpool(
            ratelimit.hit,
            scope="password_reset",
            subject=secrets.email_digest(body.email),
            limit=get_settings().password_reset_per_hour,
            what="password-reset requests for this address",
        )
        await run_in_threadpool(_record_reset_request, body.email, principal, client_address)
        dispatched = await publish.dispatch_async(
            "identity.send_password_reset_email", kwargs={"email": body.email}, triggered_by=principal.name
        )
        return dispatched.as_dict()

    return await idempotency.once(
        owner=principal.name,
        key=idempotency_key,
        route="identity.password_reset",
        body=body.model_dump(mode="json"),
        action=act,
    )


def _record_reset_request(email: str, principal: PrincipalDep, client_address: str | None) -> None:
    with session_scope() as session:
        identity_service.request_password_reset(
            session=session, email=email, actor=principal, client_address=client_address
        )


@router.post("/password-reset/confirm", response_model=Confirmed, responses=error_responses(400))
def confirm_password_reset(body: PasswordResetConfirm, principal: PrincipalDep) -> Confirmed:
    """Set a new password with a reset token: single use, expiry enforced, every session revoked."""
    with session_scope() as session:
        done = identity_service.confirm_password_reset(
            session=session, token=body.token, new_password=body.new_password, actor=principal
        )
        outcome = (done[0].id, done[1]) if done else None
    if outcome is None:
        raise InvalidToken()
    return Confirmed(status="password_changed", user_id=outcome[0], sessions_revoked=outcome[1])


@router.post(
    "/mfa/challenge",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DispatchedRead,
    responses=error_responses(404, 409, 429, 503),
)
async def create_mfa_challenge(
    body: MfaChallenge, principal: PrincipalDep, idempotency_key: IdempotencyKeyDep = None
) -> dict[str, Any]:
    """Text a fresh MFA code to the user (rate limited per user and hour)."""

    async def act() -> dict[str, Any]:
        await run_in_threadpool(_challenge, body.user_id, principal)
        dispatched = await publish.dispatch_async(
            "identity.send_mfa_code", kwargs={"user_id": body.user_id}, triggered_by=principal.name
        )
        return dispatched.as_dict()

    return await idempotency.once(
        owner=principal.name, key=idempotency_key, route="identity.mfa_challenge", body=body.model_dump(), action=act
    )


def _challenge(user_id: int, principal: PrincipalDep) -> None:
    with session_scope() as session:
        user = identity_service.require_phone(session=session, user_id=user_id)
        ratelimit.hit(
            scope="mfa_challenge",
            subject=str(user_id),
            limit=get_settings().mfa_challenges_per_hour,
            what="MFA codes for this user",
        )
        identity_service.record_mfa_challenge(session=session, user=user, actor=principal)


@router.post("/mfa/verify", response_model=MfaVerified, responses=error_responses(400, 404))
def verify_mfa(body: MfaVerify, principal: PrincipalDep) -> MfaVerified:
    """Check an MFA code (5 attempts, 5-minute expiry); a right one opens a session."""
    with session_scope() as session:
        result = identity_service.verify_mfa(session=session, user_id=body.user_id, code=body.code, actor=principal)
    if result.exhausted_code_id is not None:
        _alert_mfa_exhausted(body.user_id, result.exhausted_code_id, principal.name)
    if result.status == "expired":
        raise CodeExpired()
    if result.status == "wrong":
        raise InvalidCode(result.attempts_left)
    assert result.session_token is not None and result.expires_at is not None
    return MfaVerified(
        status="verified", user_id=body.user_id, session_token=result.session_token, expires_at=result.expires_at
    )


def _alert_mfa_exhausted(user_id: int, code_id: int, triggered_by: str) -> None:
    """Repeated wrong codes used up a code: alert the user and the admins (once per code)."""
    try:
        publish.dispatch(
            "identity.send_security_alert",
            kwargs={
                "user_id": user_id,
                "kind": "mfa_failures",
                "details": {
                    "reason": "every attempt of an MFA code failed",
                    "attempts": get_settings().mfa_max_attempts,
                },
                "dedupe_key": f"mfa-exhausted:{code_id}",
            },
            triggered_by=triggered_by,
        )
    except ServiceUnavailable:
        logger.exception("Could not dispatch the security alert for user %s (MFA code %s).", user_id, code_id)


@router.post(
    "/users/{user_id}/devices",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceRead,
    responses=error_responses(404),
)
def create_device(user_id: Id, body: DeviceCreate, session: SessionDep, _: PrincipalDep) -> object:
    """Register a push device for a user (security alerts and pushes reach it)."""
    return identity_service.add_device(session=session, user_id=user_id, token=body.token, platform=body.platform)
