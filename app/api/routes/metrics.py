"""GET /metrics: Prometheus text format (public, no secrets)."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.api.metrics import build_registry

router = APIRouter()


@lru_cache
def _registry() -> CollectorRegistry:
    return build_registry()


@router.get("/metrics", include_in_schema=False)
async def read_metrics() -> Response:
    """Prometheus exposition of Courier's metrics."""
    body = await run_in_threadpool(generate_latest, _registry())
    return Response(body, media_type=CONTENT_TYPE_LATEST)
