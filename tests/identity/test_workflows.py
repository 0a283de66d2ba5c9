"""The secret-bearing workflow on its own (app/identity/workflows.py): one message per attempt, the secret only in
the message, and a clear answer for a user with nothing to send. Delivery is the real one, to the outbox."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.config import get_settings
from app.db import session_scope
from app.identity import secrets, workflows
from app.identity import service as identity_service
from app.identity.exceptions import NoPhone, UserNotFound
from app.identity.models import OneTimeToken, TokenPurpose, User
from app.identity.schemas import UserCreate
from app.identity.workflows import Purpose
from app.notifications import delivery
from app.notifications.models import Notification


class Outbox:
    """The workflow's `deliver`: the real delivery (to the development outbox), remembering each secret."""

    def __init__(self) -> None:
        self.secrets: list[dict[str, str]] = []

    def __call__(self, notification_id: int, secret_context: dict[str, str]) -> str:
        self.secrets.append(secret_context)
        return delivery.deliver(notification_id, final_attempt=False, secret_context=secret_context).status


def _user(**fields: Any) -> User:
    user_in = UserCreate(
        email=f"wf-{uuid.uuid4().hex[:8]}@example.com", display_name="W", password="long enough pw", **fields
    )
    with session_scope() as session:
        return identity_service.create(session=session, user_in=user_in, actor="test")


def test_an_attempt_sends_its_message_once_and_the_token_only_in_the_link():
    # Given a user, and the attempt of one task
    user, outbox, attempt = _user(), Outbox(), uuid.uuid4().hex
    # When the workflow runs twice for that attempt (a redelivery)
    first = workflows.send(purpose=Purpose.password_reset, user=user.email, attempt=attempt, deliver=outbox)
    again = workflows.send(purpose=Purpose.password_reset, user=user.email, attempt=attempt, deliver=outbox)
    # Then one message was sent, and the redelivery only answered with its status
    assert first == again == workflows.Sent(user_id=user.id, notification_id=first.notification_id, status="sent")
    assert len(outbox.secrets) == 1
    # And the link carries the token in its fragment, stored only hashed, and in no field of the row or result
    link = urlsplit(outbox.secrets[0]["link"])
    token = parse_qs(link.fragment)["token"][0]
    assert not link.query
    with session_scope() as session:
        stored = session.query(OneTimeToken).filter_by(user_id=user.id, purpose=TokenPurpose.password_reset).one()
        row = session.get(Notification, first.notification_id)
        assert stored.token_hash == secrets.digest(token)
        assert row.carries_secret and token not in repr(row.data) and token not in str(first.as_dict())
    eml = get_settings().var_dir / "outbox" / "email" / f"notification-{first.notification_id}.eml"
    assert token in eml.read_text()


def test_each_purpose_sends_its_own_message_to_its_own_channel():
    user, outbox = _user(phone="+4915100000042"), Outbox()
    verify = workflows.send(purpose=Purpose.email_verification, user=user.id, attempt=uuid.uuid4().hex, deliver=outbox)
    code = workflows.send(purpose=Purpose.mfa_code, user=user.id, attempt=uuid.uuid4().hex, deliver=outbox)
    assert (verify.status, code.status) == ("sent", "sent")
    with session_scope() as session:
        rows = [session.get(Notification, answer.notification_id) for answer in (verify, code)]
        assert [(r.channel, r.recipient, r.template) for r in rows] == [
            ("email", user.email, "account_verification"),
            ("sms", "+4915100000042", "mfa_code"),
        ]
    assert "link" in outbox.secrets[0] and outbox.secrets[1]["code"].isdigit()


def test_users_with_nothing_to_send_get_an_answer_and_no_message():
    outbox = Outbox()
    # An address that belongs to no one: nothing is sent, and nothing says so but the status
    unknown = workflows.send(
        purpose=Purpose.password_reset, user="nobody@example.com", attempt=uuid.uuid4().hex, deliver=outbox
    )
    assert unknown.as_dict() == {"user_id": None, "status": "no_user"}
    # A verified address needs no verification
    user = _user()
    with session_scope() as session:
        session.get(User, user.id).verified = True
    done = workflows.send(purpose=Purpose.email_verification, user=user.id, attempt=uuid.uuid4().hex, deliver=outbox)
    assert done.as_dict() == {"user_id": user.id, "status": "already_verified"}
    # An unknown id, or a code for a user without a phone, is an error that says which
    with pytest.raises(UserNotFound):
        workflows.send(purpose=Purpose.mfa_code, user=2**31 - 1, attempt=uuid.uuid4().hex, deliver=outbox)
    with pytest.raises(NoPhone):
        workflows.send(purpose=Purpose.mfa_code, user=user.id, attempt=uuid.uuid4().hex, deliver=outbox)
    assert outbox.secrets == []
