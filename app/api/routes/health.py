"""Liveness (`/api/v1/tasks/health/live`: the process answers) and readiness (`/api/v1/tasks/health`: broker,
result backend, database and workers, each up or down with latency)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep
from app.runs.schemas import HealthRead
from app.tasks import control

router = APIRouter()


@router.get("/health/live")
async def read_liveness() -> dict[str, str]:
    """Liveness: the process answers (no dependency is checked; readiness is /health)."""
    return {"status": "up"}


@router.get("/health", response_model=HealthRead, responses={503: {"model": HealthRead}})
async def read_health(settings: SettingsDep) -> JSONResponse:
    """Check every component concurrently; 200 when all are up, 503 otherwise."""
    broker, redis, database, workers = await asyncio.gather(
        run_in_threadpool(control.check_broker, settings),
        run_in_threadpool(control.check_redis),
        run_in_threadpool(control.check_database),
        run_in_threadpool(control.check_workers),
    )
    components = {"broker": broker, "result_backend": redis, "database": database, "workers": workers}
    up = all(c.status == "up" for c in components.values())
    body = HealthRead(status="up" if up else "down", components=components)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if up else 503)
