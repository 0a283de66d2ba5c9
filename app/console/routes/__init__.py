"""The console's one map: every page and form, under /console."""

from __future__ import annotations

from fastapi import APIRouter

from app.console.routes import audit, auth, bulk, deadletters, overview, queues, runs

router = APIRouter(prefix="/console", include_in_schema=False)
for module in (auth, overview, bulk, deadletters, runs, queues, audit):
    router.include_router(module.router)
