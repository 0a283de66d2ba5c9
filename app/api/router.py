"""The one map of the API: prefixes, tags and authentication are given here and nowhere else."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import get_principal, require_admin
from app.api.routes import audit as audit_routes  # (section: audit)
from app.api.routes import dead_letters, health, metrics, tasks
from app.api.routes import identity as identity_routes  # (section: identity)
from app.api.routes import integrations as integration_routes  # (section: audit)
from app.api.routes import notifications as notification_routes  # (section: identity)
from app.api.routes import operations as operations_routes  # (section: ops)
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

# --- Identity and notifications (issue 4) (section: identity)
# Client role: any valid key (admins too) may run the identity and notification workflows.
api_router.include_router(
    identity_routes.router, prefix="/api/v1/identity", tags=["identity"], dependencies=[Depends(get_principal)]
)
api_router.include_router(
    notification_routes.router,
    prefix="/api/v1/notifications",
    tags=["notifications"],
    dependencies=[Depends(get_principal)],
)

# --- Audit and integrations (issue 5) (section: audit)
api_router.include_router(
    audit_routes.router, prefix="/api/v1/audit", tags=["audit"], dependencies=[Depends(require_admin)]
)
api_router.include_router(
    integration_routes.router,
    prefix="/api/v1/integrations",
    tags=["integrations"],
    dependencies=[Depends(get_principal)],
)

# --- Observability and operations (issue 7) (section: ops)
api_router.include_router(
    operations_routes.router, prefix="/api/v1/tasks", tags=["operations"], dependencies=[Depends(require_admin)]
)
