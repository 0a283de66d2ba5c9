"""The one map of the API: prefixes, tags and authentication are given here and nowhere else."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import get_principal, require_admin
from app.api.guards import reject_nul_characters
from app.api.routes import audit as audit_routes
from app.api.routes import dead_letters, health, metrics, tasks
from app.api.routes import identity as identity_routes
from app.api.routes import integrations as integration_routes
from app.api.routes import notifications as notification_routes
from app.api.routes import operations as operations_routes
from app.errors import error_responses

# Error answers common to a router are declared here, once; a route declares its own (404, 409, 429, 503...).
#: Any valid key; a request with input may be invalid (422, also for text no database holds: app/api/guards.py),
#: a body may not be UTF-8 text at all (400, FastAPI's own answer before any validation).
_client = [Depends(get_principal), Depends(reject_nul_characters)]
#: Any route may meet a dependency that is down (Redis, SQL, the broker): 503 with Retry-After (app/errors.py).
_client_errors = error_responses(400, 401, 422, 503)
#: Admin keys only.
_admin = [Depends(require_admin), Depends(reject_nul_characters)]
_admin_errors = error_responses(400, 401, 403, 422, 503)

api_router = APIRouter()
# Public: health and metrics only (no secrets in their output).
api_router.include_router(metrics.router, tags=["metrics"])
api_router.include_router(health.router, prefix="/api/v1/tasks", tags=["health"])
# Authenticated: every other route; role checks (AdminDep) sit on the routes that need them (and declare 403).
api_router.include_router(
    dead_letters.router,
    prefix="/api/v1/tasks/dead-letters",
    tags=["dead letters"],
    dependencies=_admin,
    responses=_admin_errors,
)
api_router.include_router(
    tasks.router, prefix="/api/v1/tasks", tags=["tasks"], dependencies=_client, responses=_client_errors
)

# --- Identity and notifications
# Client role: any valid key (admins too) may run the identity and notification workflows.
api_router.include_router(
    identity_routes.router,
    prefix="/api/v1/identity",
    tags=["identity"],
    dependencies=_client,
    responses=_client_errors,
)
api_router.include_router(
    notification_routes.router,
    prefix="/api/v1/notifications",
    tags=["notifications"],
    dependencies=_client,
    responses=_client_errors,
)

# --- Audit and integrations
api_router.include_router(
    audit_routes.router, prefix="/api/v1/audit", tags=["audit"], dependencies=_admin, responses=_admin_errors
)
api_router.include_router(
    integration_routes.router,
    prefix="/api/v1/integrations",
    tags=["integrations"],
    dependencies=_client,
    responses=_client_errors,
)

# --- Observability and operations
api_router.include_router(
    operations_routes.router,
    prefix="/api/v1/tasks",
    tags=["operations"],
    dependencies=_admin,
    responses=_admin_errors,
)
