"""Dead letters under /api/v1/tasks/dead-letters (admin): read, replay one or in bulk, discard, purge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import AdminDep, SessionDep
from app.deadletters import service as deadletters
from app.deadletters.models import Reason, Status
from app.deadletters.schemas import (
    AttemptRead,
    BulkReplayCreate,
    BulkReplayRead,
    DeadLetterGroup,
    DeadLetterPage,
    DeadLetterRead,
    DeadLetterSummary,
    PurgeCreate,
    PurgeRead,
    ReplayCreate,
)
from app.engine import dead_letters
from app.errors import error_responses
from app.runs import service as runs_service
from app.schema_types import Id, Limit, Offset

router = APIRouter()


def _criteria(body: BulkReplayCreate | PurgeCreate) -> deadletters.DeadLetterFilter:
    return deadletters.DeadLetterFilter(
        task_name=body.task_name,
        reason=body.reason,
        queue=body.queue,
        error_class=body.error_class,
        since=body.since,
        until=body.until,
    )


@router.get("", response_model=DeadLetterPage)
def list_dead_letters(
    session: SessionDep,
    _: AdminDep,
    task_name: Annotated[str | None, Query(max_length=200)] = None,
    reason: Reason | None = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    error_class: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    state: Annotated[Status | None, Query(alias="status")] = Status.pending,
    task_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DeadLetterPage:
    """Dead letters, newest first, with counts grouped by task, reason and error class."""
    filters = deadletters.DeadLetterFilter(
        task_name=task_name,
        reason=reason,
        queue=queue,
        error_class=error_class,
        since=since,
        until=until,
        status=state,
        task_id=task_id,
    )
    items, total, groups = deadletters.list_letters(session=session, filters=filters, limit=limit, offset=offset)
    return DeadLetterPage(
        items=[DeadLetterSummary.model_validate(i) for i in items],
        total=total,
        limit=limit,
        offset=offset,
        groups=[DeadLetterGroup(**g) for g in groups],
    )


@router.get("/{letter_id}", response_model=DeadLetterRead, responses=error_responses(404))
def read_dead_letter(letter_id: Id, session: SessionDep, _: AdminDep) -> DeadLetterRead:
    """Everything recorded about one dead letter, with every failed attempt of its task."""
    letter = deadletters.get(session=session, letter_id=letter_id)
    found = DeadLetterRead.model_validate(letter)
    if letter.task_id:
        attempts = runs_service.attempts(session=session, task_id=letter.task_id)
        found.attempts = [AttemptRead.model_validate(a) for a in attempts]
    return found


@router.post(
    "/replay", response_model=BulkReplayRead, status_code=status.HTTP_202_ACCEPTED, responses=error_responses(503)
)
def replay_dead_letters(body: BulkReplayCreate, session: SessionDep, admin: AdminDep) -> BulkReplayRead:
    """Replay every pending letter that matches, paced by a low-tier task; `dry_run` only counts them."""
    done = dead_letters.replay_matching(
        session=session,
        filters=_criteria(body),
        actor=admin,
        rate_per_s=body.rate_per_s,
        why=body.why,
        dry_run=body.dry_run,
        described=body.model_dump(mode="json", exclude={"why"}),
    )
    if done.task_id is None or done.status_url is None:
        return BulkReplayRead(matched=done.matched, dry_run=body.dry_run)
    return BulkReplayRead(matched=done.matched, dry_run=False, task_id=done.task_id, status_url=done.status_url)


@router.post("/purge", response_model=PurgeRead)
def purge_dead_letters(body: PurgeCreate, session: SessionDep, admin: AdminDep) -> PurgeRead:
    """Discard every pending letter that matches, with a reason (records are kept, marked discarded)."""
    return PurgeRead(
        discarded=deadletters.purge(session=session, filters=_criteria(body), actor=admin, reason=body.why)
    )


@router.post("/{letter_id}/replay", response_model=DeadLetterRead, responses=error_responses(404, 409, 503))
def replay_dead_letter(
    letter_id: Id, session: SessionDep, admin: AdminDep, body: ReplayCreate | None = None
) -> DeadLetterRead:
    """Publish it back to its queue under the same task id, with a fresh retry budget (optionally new kwargs)."""
    body = body or ReplayCreate()
    letter = dead_letters.replay(session=session, letter_id=letter_id, actor=admin, reason=body.why, kwargs=body.kwargs)
    return DeadLetterRead.model_validate(letter)


@router.delete("/{letter_id}", response_model=DeadLetterRead, responses=error_responses(404, 409))
def discard_dead_letter(
    letter_id: Id, session: SessionDep, admin: AdminDep, why: Annotated[str, Query(min_length=1, max_length=500)]
) -> DeadLetterRead:
    """Discard one letter with a reason; the record stays, marked discarded."""
    return DeadLetterRead.model_validate(
        deadletters.discard(session=session, letter_id=letter_id, actor=admin, reason=why)
    )
