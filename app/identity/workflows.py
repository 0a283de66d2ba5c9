"""Secret-bearing identity messages: a password-reset link, an address-verification link, an MFA code.

All three run one workflow, `send`, parameterised by `Purpose`: fetch the user, find or create the message's
notification row, stop if that row was already sent or cancelled, make the secret (stored only hashed) and commit,
then hand the row and the secret to the caller's `deliver`. The secret exists in clear only in this process's
memory while the message is rendered and sent; it is never an argument, a result or a log line.

The row is keyed by the attempt (the task id, `dedupe_key`), so a redelivered task that already sent its message
sends nothing; one that had not sent it yet makes a fresh secret (retiring the unsent one) and sends that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import session_scope
from app.identity import service as identity_service
from app.identity.exceptions import NoPhone, UserNotFound
from app.identity.models import TokenPurpose, User
from app.notifications import service as notification_service
from app.notifications.models import Channel, Status

#: Sends the notification with its secret (`notification_id`, `secret_context`); returns the row's status after.
Deliver = Callable[[int, dict[str, str]], str]


class Purpose(StrEnum):
    """Which secret a message carries."""

    password_reset = "password_reset"
    email_verification = "email_verification"
    mfa_code = "mfa_code"


@dataclass(frozen=True)
class Sent:
    """What `send` did, in ids and statuses only (a task's result): never the secret.

    `status` is the notification's (`sent`, `cancelled`, ...), or `already_verified` (nothing to verify), or
    `no_user` (a password reset for an address that belongs to no one: nothing was sent).
    """

    user_id: int | None
    status: str
    notification_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form: the user, the notification when there is one, and the status."""
        answer: dict[str, Any] = {"user_id": self.user_id}
        if self.notification_id is not None:
            answer["notification_id"] = self.notification_id
        answer["status"] = self.status
        return answer


def _link(base: str, token: str) -> str:
    """The emailed link. The token travels in the fragment (`#token=...`), which browsers never send to a
    server, so it cannot end up in an access log when the link is opened."""
    return f"{base}#{urlencode({'token': token})}"


@dataclass(frozen=True)
class _Recipe:
    """How one purpose's message is made: where it goes, what it says, and the secret it carries."""

    #: Prefix of the row's dedupe key; redelivered tasks find their rows by it, so it never changes.
    dedupe_prefix: str
    channel: Channel
    template: str
    recipient: Callable[[User], str | None]
    data: Callable[[Settings, User], dict[str, Any]]
    secret: Callable[[Session, Settings, User], dict[str, str]]
    #: A user for whom there is nothing to do (answered with this status), if the purpose has one.
    done: tuple[Callable[[User], bool], str] | None = None


def _token_link(
    purpose: TokenPurpose, base: Callable[[Settings], str]
) -> Callable[[Session, Settings, User], dict[str, str]]:
    def secret(session: Session, settings: Settings, user: User) -> dict[str, str]:
        token = identity_service.issue_token(session=session, user=user, purpose=purpose)
        return {"link": _link(base(settings), token)}

    return secret


_RECIPES: dict[Purpose, _Recipe] = {
    Purpose.password_reset: _Recipe(
        dedupe_prefix="identity.password_reset",
        channel=Channel.email,
        template="password_reset",
        recipient=lambda user: user.email,
        data=lambda s, user: {"display_name": user.display_name, "ttl_minutes": s.password_reset_token_ttl_s // 60},
        secret=_token_link(TokenPurpose.password_reset, lambda s: s.password_reset_url),
    ),
    Purpose.email_verification: _Recipe(
        dedupe_prefix="identity.verify_email",
        channel=Channel.email,
        template="account_verification",
        recipient=lambda user: user.email,
        data=lambda s, user: {"display_name": user.display_name, "ttl_hours": s.email_verification_token_ttl_s // 3600},
        secret=_token_link(TokenPurpose.email_verification, lambda s: s.email_verification_url),
        done=(lambda user: user.verified, "already_verified"),
    ),
    Purpose.mfa_code: _Recipe(
        dedupe_prefix="identity.mfa_code",
        channel=Channel.sms,
        template="mfa_code",
        recipient=lambda user: user.phone,
        data=lambda s, user: {"ttl_minutes": max(1, s.mfa_code_ttl_s // 60)},
        secret=lambda session, s, user: {"code": identity_service.issue_mfa_code(session=session, user=user)},
    ),
}


def send(*, purpose: Purpose, user: int | str, attempt: str, deliver: Deliver) -> Sent:
    """Send `user` (an id, or the address a client typed for a password reset) a message with a fresh secret.

    `attempt` keys the message (the task id): the same attempt never sends twice.

    Raises:
        UserNotFound: no user has the id `user`.
        NoPhone: the message is a text and the user has no phone number.
    """
    recipe = _RECIPES[purpose]
    settings = get_settings()
    with session_scope() as session:
        found = _user(session, user)
        if found is None:
            return Sent(user_id=None, status="no_user")
        if recipe.done is not None and recipe.done[0](found):
            return Sent(user_id=found.id, status=recipe.done[1])
        recipient = recipe.recipient(found)
        if not recipient:  # only a phone number may be missing
            raise NoPhone(found.id)
        row = notification_service.get_by_dedupe_key(session=session, dedupe_key=f"{recipe.dedupe_prefix}:{attempt}")
        if row is None:
            row = notification_service.create(
                session=session,
                channel=recipe.channel,
                recipient=recipient,
                template=recipe.template,
                data=recipe.data(settings, found),
                tier="high",
                dedupe_key=f"{recipe.dedupe_prefix}:{attempt}",
                carries_secret=True,
            )
        if row.status in (Status.sent, Status.cancelled):
            return Sent(user_id=found.id, notification_id=row.id, status=str(row.status))
        secret = recipe.secret(session, settings, found)
        user_id, notification_id = found.id, row.id
    return Sent(user_id=user_id, notification_id=notification_id, status=deliver(notification_id, secret))


def _user(session: Session, user: int | str) -> User | None:
    """The user by address (None when there is none), or by id (which must exist)."""
    if isinstance(user, str):
        return identity_service.get_by_email(session=session, email=user)
    found = session.get(User, user)
    if found is None:
        raise UserNotFound(user)
    return found
