"""The one map of the API: prefixes, tags and authentication are given here and nowhere else."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import get_principal, require_admin
from app.api.routes import dead_letters, health, metrics, tasks
from app.errors import ErrorResponse

_errors: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 503)
}

api_router = APIRouter(responses=_errors)
# Public: health and metrics only (no secrets in their output).
api_router.include_router(metrics.router, tags=["metrics"])
api_router.include_router(health.router, prefix="/api/v1/tasks", tags=["health"])
# Authenticated: every other route; role checks (AdminDep) sit on the routes that need them.
api_router.include_router(
    dead_letters.router,
    prefix="/api/v1/tasks/dead-letters",
    tags=["dead letters"],
    dependencies=[Depends(require_admin)],
)
api_router.include_router(tasks.router, prefix="/api/v1/tasks", tags=["tasks"], dependencies=[Depends(get_principal)])
