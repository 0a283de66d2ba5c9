"""Operations under /api/v1/tasks (admin): pause, resume and purge queues; the overview; performance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminDep, SessionDep, SettingsDep
from app.engine.inspect import Broker
from app.errors import error_responses
from app.operations import service
from app.operations.schemas import (
    OverviewRead,
    PauseCreate,
    PauseRead,
    PerformanceRead,
    PurgeCreate,
    PurgeRead,
    QueueControlRead,
)

router = APIRouter()


@router.post("/queues/{name}/pause", response_model=QueueControlRead, responses=error_responses(503))
def pause_queue(
    name: str, session: SessionDep, settings: SettingsDep, admin: AdminDep, body: PauseCreate | None = None
) -> QueueControlRead:
    """Stop every worker consuming a tier until it is resumed, across worker restarts (audited)."""
    acked = service.pause(
        session=session, queue=name, actor=admin, reason=body.reason if body else None, broker=Broker(settings)
    )
    return QueueControlRead(queue=name, paused=True, workers=acked)


@router.post("/queues/{name}/resume", response_model=QueueControlRead, responses=error_responses(503))
def resume_queue(
    name: str, session: SessionDep, settings: SettingsDep, admin: AdminDep, body: PauseCreate | None = None
) -> QueueControlRead:
    """Let the workers configured for a tier consume it again (audited)."""
    acked = service.resume(
        session=session, queue=name, actor=admin, reason=body.reason if body else None, broker=Broker(settings)
    )
    return QueueControlRead(queue=name, paused=False, workers=acked)


@router.get("/queues/paused", response_model=list[PauseRead])
def list_paused(session: SessionDep, _: AdminDep) -> list[PauseRead]:
    """The paused tiers, who paused them and why."""
    return [PauseRead.model_validate(p) for p in service.paused(session=session)]


@router.post("/queues/{name}/purge", response_model=PurgeRead, responses=error_responses(409, 503))
def purge_queue(name: str, session: SessionDep, settings: SettingsDep, admin: AdminDep, body: PurgeCreate) -> PurgeRead:
    """Drop a queue's ready messages: a first call answers 409 with a confirm_token, a second one with it purges."""
    if not body.confirm_token:
        service.purge_token(queue=name, actor=admin, broker=Broker(settings))
    purged = service.confirm_purge(
        session=session,
        queue=name,
        actor=admin,
        token=str(body.confirm_token),
        reason=body.reason,
        broker=Broker(settings),
    )
    return PurgeRead(queue=name, purged=purged)


@router.get("/overview", response_model=OverviewRead, responses=error_responses(503))
def read_overview(
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
    window_s: Annotated[int, Query(ge=60, le=86_400)] = 300,
) -> OverviewRead:
    """Queues, workers, paused tiers, pending dead letters and recent counts: the operator's one screen."""
    return service.overview(session=session, broker=Broker(settings), window_s=window_s)


@router.get("/performance", response_model=PerformanceRead)
def read_performance(
    session: SessionDep, _: AdminDep, window_s: Annotated[int, Query(ge=60, le=30 * 86_400)] = 3600
) -> PerformanceRead:
    """Throughput and P50/P95/max run times over a window, per task name and in total."""
    return service.performance(session=session, window_s=window_s)
