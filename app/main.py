"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import errors
from app.api.router import api_router
from app.audit.middleware import AuditMiddleware
from app.config import get_settings
from app.context import RequestIdMiddleware
from app.logging import configure_logging
from app.metrics import MetricsMiddleware


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Configure logging; connections open lazily and are pooled per process."""
    configure_logging(get_settings().log_level)
    yield
    from app.tasks import publish

    await publish.close()


def create_app() -> FastAPI:
    """Build the application: routes from the one map, the one error envelope."""
    app = FastAPI(
        title="Courier",
        summary="Background tasks on Celery and RabbitMQ where nothing accepted is ever silently lost.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.register(app)
    # Inside RequestIdMiddleware (added later, so outermost): audit entries carry the request id.
    app.add_middleware(AuditMiddleware)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(api_router)
    return app


app = create_app()
