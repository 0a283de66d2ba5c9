"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError
from sqlalchemy.orm import configure_mappers
from starlette.concurrency import run_in_threadpool

from app import docs, errors, health, tasks, web_assets
from app.api.audit_middleware import AuditMiddleware
from app.api.body_limit import BodyLimitMiddleware
from app.api.metrics import MetricsMiddleware
from app.api.router import api_router
from app.config import get_settings
from app.console.mount import mount as mount_console
from app.context import RequestIdMiddleware
from app.engine import publish
from app.engine.speed.amqp_async import PublishFailed
from app.logging import configure_logging
from app.memory import freeze_start_up_objects

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Configure logging and warm up; connections are pooled per process (and reopened as needed)."""
    configure_logging(get_settings().log_level)
    web_assets.warn_if_missing(app)
    await _warm_up(app)
    freeze_start_up_objects()  # (after the warm-up, so what it built is frozen too)
    yield
    await publish.close()


async def _warm_up(app: FastAPI) -> None:
    """Do now what each process's first requests would otherwise wait for: FastAPI building its routes' models,
    SQLAlchemy configuring its mappers, the SQL engine's first connection and the publishing connection. A service
    that is down does not stop the start: requests reconnect."""
    app.openapi()  # (builds every route's models, which FastAPI otherwise does on the first match)
    configure_mappers()  # (SQLAlchemy otherwise configures every mapper on the first query)
    database = await run_in_threadpool(health.check_database)
    if database.status != "up":
        logger.warning("The database did not answer at start-up: %s.", database.detail)
    try:
        await publish.warm_up()
    except (PublishFailed, RedisError, OSError) as exc:
        logger.warning("The broker or Redis did not answer at start-up: %r.", exc)


def create_app() -> FastAPI:
    """Build the application: routes from the one map, the one error envelope, docs served without a CDN."""
    app = FastAPI(
        title="Courier",
        summary="Background tasks on Celery and RabbitMQ where nothing accepted is ever silently lost.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own /docs and /redoc load their scripts from a CDN; app/docs.py serves them from npm's copies.
        docs_url=None,
        redoc_url=None,
    )
    tasks.install_publisher()  # the domains enqueue through the engine's confirmed publisher (app/dispatch.py)
    errors.register(app)
    # Innermost: a body over the bound is refused (413) before a route reads it, and the refusal is audited.
    app.add_middleware(BodyLimitMiddleware)
    # Inside RequestIdMiddleware (added later, so outermost): audit entries carry the request id.
    app.add_middleware(AuditMiddleware)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(api_router)
    app.include_router(docs.router)
    web_assets.mount(app, get_settings())
    mount_console(app)  # /console: after errors.register, whose JSON answers it keeps for every other path
    return app


app = create_app()
