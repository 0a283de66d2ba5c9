"""Task management under /api/v1/tasks: dispatch a probe, read tasks and runs, revoke, queues, workers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.access.schemas import Principal
from app.api.deps import AdminDep, IdempotencyKeyDep, PrincipalDep, SessionDep, SettingsDep
from app.constants import TaskState
from app.db import session_scope, utcnow
from app.engine import inspect, publish
from app.errors import NotFound, error_responses
from app.operations import service as operations
from app.runs import service as runs_service
from app.runs.schemas import (
    ActiveTask,
    DispatchedRead,
    PingCreate,
    QueueRead,
    RevokeCreate,
    RevokeRead,
    RunPage,
    RunRead,
    ScheduledRead,
    StatsRead,
    TaskId,
    TaskRead,
    WorkerRead,
)
from app.schema_types import Limit, Offset

router = APIRouter()


@router.post(
    "/ping",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DispatchedRead,
    responses=error_responses(403, 409, 503),
)
async def create_ping(body: PingCreate, admin: AdminDep, idempotency_key: IdempotencyKeyDep = None) -> DispatchedRead:
    """Dispatch the probe task on a tier; 202 only once RabbitMQ confirmed it."""
    dispatched = await publish.dispatch_once(
        "system.ping",
        kwargs={"sleep_s": body.sleep_s, "fail": body.fail, "echo": body.echo},
        triggered_by=admin.name,
        idempotency_key=idempotency_key,
        request_body=body.model_dump(mode="json"),
        tier=body.tier,
        priority=body.priority,
        options={"soft_time_limit": body.soft_time_limit_s, "time_limit": body.time_limit_s, "expires": body.expires_s},
    )
    return DispatchedRead(**dispatched.as_dict())


@router.get("/task/{task_id}", response_model=TaskRead, responses=error_responses(404))
def read_task(task_id: TaskId, session: SessionDep, principal: PrincipalDep) -> TaskRead:
    """State, result or error, attempts, tier and timings of one task; clients see only their own."""
    found = inspect.task_status(session=session, task_id=task_id)
    if found is None or (not principal.reads_everything and found.triggered_by != principal.name):
        raise NotFound(f"No task {task_id} is known to Courier.")
    return found


@router.get("/task/{task_id}/events", response_class=StreamingResponse, responses=error_responses(404, 429))
async def stream_task_events(
    task_id: TaskId, request: Request, settings: SettingsDep, principal: PrincipalDep
) -> StreamingResponse:
    """Server-Sent Events: one `state` event per change of state or progress, then `end` once it finished."""
    first = await run_in_threadpool(_visible_task, task_id, principal)
    events = inspect.open_status_stream(
        first, key_id=principal.key_id, is_disconnected=request.is_disconnected, settings=settings
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _visible_task(task_id: str, principal: Principal) -> TaskRead:
    with session_scope() as session:
        found = inspect.task_status(session=session, task_id=task_id)
    if found is None or (not principal.reads_everything and found.triggered_by != principal.name):
        raise NotFound(f"No task {task_id} is known to Courier.")
    return found


@router.post("/task/{task_id}/revoke", response_model=RevokeRead, responses=error_responses(403, 503))
def revoke_task(task_id: TaskId, session: SessionDep, admin: AdminDep, body: RevokeCreate | None = None) -> RevokeRead:
    """Revoke a task durably: if it has not started it never runs, even across worker restarts."""
    body = body or RevokeCreate()
    return inspect.revoke(
        session=session, task_id=task_id, terminate=body.terminate, revoked_by=admin.name, reason=body.reason
    )


@router.get("/runs", response_model=RunPage, responses=error_responses(403))
def list_runs(
    session: SessionDep,
    _: AdminDep,
    state: TaskState | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    triggered_by: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> RunPage:
    """The durable run history, newest first, filterable by state, name, time and caller."""
    filters = runs_service.RunFilter(
        states=(state,) if state else (), name=name, since=since, until=until, triggered_by=triggered_by
    )
    items, total = runs_service.list_runs(session=session, filters=filters, limit=limit, offset=offset)
    return RunPage(items=[RunRead.model_validate(r) for r in items], total=total, limit=limit, offset=offset)


@router.get("/stats", response_model=StatsRead, responses=error_responses(403, 503))
def read_stats(
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
    window_s: Annotated[int, Query(ge=60, le=30 * 86_400)] = 3600,
) -> StatsRead:
    """Counts by state over a window, queue depths, worker count and success rate."""
    # The broker and Redis first: the session's transaction opens at its first query (see operations.overview).
    queues, workers = inspect.queues(settings), operations.workers()
    counts = runs_service.counts_by_state(session=session, since=utcnow() - timedelta(seconds=window_s))
    finished = (
        counts.get(TaskState.SUCCESS, 0) + counts.get(TaskState.FAILURE, 0) + counts.get(TaskState.DEAD_LETTERED, 0)
    )
    return StatsRead(
        window_s=window_s,
        counts=counts,
        total=sum(counts.values()),
        success_rate=round(counts.get(TaskState.SUCCESS, 0) / finished, 4) if finished else None,
        queues={q.name: q.ready + q.unacked for q in queues},
        workers=len(workers),
    )


@router.get("/active", response_model=list[ActiveTask], responses=error_responses(403, 503))
async def list_active(_: AdminDep) -> list[ActiveTask]:
    """Tasks executing now, per worker (a 1 s broadcast)."""
    return await run_in_threadpool(inspect.active)


@router.get("/scheduled", response_model=ScheduledRead, responses=error_responses(403, 503))
async def list_scheduled(_: AdminDep) -> ScheduledRead:
    """Countdown/ETA tasks held by workers, and the periodic schedule."""
    return await run_in_threadpool(inspect.scheduled)


@router.get("/queues", response_model=list[QueueRead], responses=error_responses(403, 503))
def list_queues(settings: SettingsDep, _: AdminDep) -> list[QueueRead]:
    """Ready, unacked and consumers of high, medium, low and dead_letter."""
    return inspect.queues(settings)


@router.get("/workers", response_model=list[WorkerRead], responses=error_responses(403))
def list_workers(_: AdminDep) -> list[WorkerRead]:
    """Live workers with their queues, concurrency and heartbeat age."""
    return operations.workers()
