"""Liveness (`/api/v1/tasks/health/live`: the process answers) and readiness (`/api/v1/tasks/health`: broker,
result backend, database and workers, each up or down with latency).

This router also carries the API's start-up check of Redis persistence (`lifespan`, merged into the app's by
`include_router`): readiness and the refusal to start on a Redis that persists nothing are one concern.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app import health, redis_store
from app.api.deps import SettingsDep
from app.config import get_settings
from app.runs.schemas import HealthRead

logger = logging.getLogger(__name__)


@asynccontextmanager
async def check_redis_persistence(_: Any) -> AsyncIterator[None]:
    """At API start-up: refuse to start in production on a Redis that persists nothing; warn loudly elsewhere."""
    try:
        await run_in_threadpool(redis_store.check_persistence_at_start, get_settings(), process="API")
    except redis_store.PersistenceRefused as exc:
        logger.critical("%s", exc)
        raise
    yield


router = APIRouter(lifespan=check_redis_persistence)


@router.get("/health/live")
async def read_liveness() -> dict[str, str]:
    """Liveness: the process answers (no dependency is checked; readiness is /health)."""
    return {"status": "up"}


@router.get("/health", response_model=HealthRead, responses={503: {"model": HealthRead}})
async def read_health(settings: SettingsDep) -> JSONResponse:
    """Check every component concurrently, each within its deadline; 200 when all are up, 503 otherwise."""
    body = await run_in_threadpool(health.health, settings)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.status == "up" else 503)
