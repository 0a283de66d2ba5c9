"""Notifications under /api/v1/notifications: send one (now or at `send_at`), send in bulk, read, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool

from app import idempotency
from app.access.schemas import Principal
from app.api.deps import IdempotencyKeyDep, PrincipalDep, SessionDep
from app.config import get_settings
from app.db import session_scope, utcnow
from app.engine import publish
from app.errors import ServiceUnavailable, Unprocessable, error_responses
from app.notifications import service as notification_service
from app.notifications.models import Notification, Status
from app.notifications.schemas import (
    BulkCreate,
    BulkDispatched,
    NotificationCreate,
    NotificationDispatched,
    NotificationRead,
)
from app.schema_types import Id

router = APIRouter()


def _owner(principal: Principal) -> str | None:
    """Admins and viewers see every notification; a client only its own."""
    return None if principal.reads_everything else principal.name


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NotificationDispatched,
    responses=error_responses(409, 503),
)
async def create_notification(
    body: NotificationCreate, principal: PrincipalDep, idempotency_key: IdempotencyKeyDep = None
) -> dict[str, Any]:
    """Send one notification now, or at `send_at` (never before it, within a minute after it)."""

    async def act() -> dict[str, Any]:
        row = await run_in_threadpool(_create, body, principal.name)
        try:
            dispatched = await publish.dispatch_async(
                notification_service.SEND_TASKS[body.channel],
                kwargs={"notification_id": row.id},
                triggered_by=principal.name,
                tier=body.tier,
            )
        except ServiceUnavailable:
            await run_in_threadpool(_withdraw, [row.id])
            raise
        return NotificationDispatched(
            **dispatched.as_dict(), notification_id=row.id, notification_url=f"/api/v1/notifications/{row.id}"
        ).model_dump()

    return await idempotency.once(
        owner=principal.name,
        key=idempotency_key,
        route="notifications.create",
        body=body.model_dump(mode="json"),
        action=act,
    )


def _create(body: NotificationCreate, created_by: str) -> Notification:
    with session_scope() as session:
        row = notification_service.create(
            session=session,
            channel=body.channel,
            recipient=body.recipient,
            subject=body.subject,
            body=body.body,
            template="message",
            data=body.data,
            tier=body.tier.value,
            send_at=body.send_at,
            created_by=created_by,
        )
        row.dispatched_at = utcnow()
        return row


def _withdraw(notification_ids: list[int]) -> None:
    """Cancel rows whose send task could not be published: the client got 503 and will retry."""
    with session_scope() as session:
        for row in session.query(Notification).filter(Notification.id.in_(notification_ids)):
            row.status, row.last_error = Status.cancelled, "the send task could not be dispatched (503)"


@router.post(
    "/bulk", status_code=status.HTTP_202_ACCEPTED, response_model=BulkDispatched, responses=error_responses(409, 503)
)
async def create_bulk_notification(
    body: BulkCreate, principal: PrincipalDep, idempotency_key: IdempotencyKeyDep = None
) -> dict[str, Any]:
    """Send one message to many recipients; the task's status URL shows `current/total` progress."""
    limit = get_settings().bulk_max_recipients
    if len(body.recipients) > limit:
        raise Unprocessable(f"At most {limit} recipients per bulk send.", details={"recipients": len(body.recipients)})

    async def act() -> dict[str, Any]:
        batch_id = await run_in_threadpool(_create_batch, body, principal.name)
        try:
            dispatched = await publish.dispatch_async(
                "notifications.send_bulk_notification",
                kwargs={"batch_id": batch_id},
                triggered_by=principal.name,
                tier=body.tier,
            )
        except ServiceUnavailable:
            await run_in_threadpool(_withdraw_batch, batch_id)
            raise
        return BulkDispatched(**dispatched.as_dict(), batch_id=batch_id, total=len(body.recipients)).model_dump()

    return await idempotency.once(
        owner=principal.name,
        key=idempotency_key,
        route="notifications.bulk",
        body=body.model_dump(mode="json"),
        action=act,
    )


def _create_batch(body: BulkCreate, created_by: str) -> str:
    with session_scope() as session:
        return notification_service.create_bulk(
            session=session,
            channel=body.channel,
            recipients=body.recipients,
            subject=body.subject,
            body=body.body,
            data=body.data,
            tier=body.tier.value,
            created_by=created_by,
        )


def _withdraw_batch(batch_id: str) -> None:
    with session_scope() as session:
        session.query(Notification).filter(Notification.batch_id == batch_id).update(
            {"status": Status.cancelled, "last_error": "the bulk task could not be dispatched (503)"}
        )


@router.get("/{notification_id}", response_model=NotificationRead, responses=error_responses(404))
def read_notification(notification_id: Id, session: SessionDep, principal: PrincipalDep) -> Notification:
    """Status, attempts, timestamps, provider id and last error of one notification."""
    return notification_service.get(session=session, notification_id=notification_id, owner=_owner(principal))


@router.post("/{notification_id}/cancel", response_model=NotificationRead, responses=error_responses(404, 409))
def cancel_notification(notification_id: Id, session: SessionDep, principal: PrincipalDep) -> Notification:
    """Cancel a notification that has not been sent yet (409 once it is sent, failed or cancelled)."""
    return notification_service.cancel(session=session, notification_id=notification_id, owner=_owner(principal))
