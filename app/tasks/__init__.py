"""Courier's Celery side. `celery -A app.tasks ...` resolves `app` below (Celery's find_app looks for it).

Importing this package also installs the engine's confirmed publisher into the domains' enqueue port
(app/dispatch.py): the worker and beat import it by `-A app.tasks`; the API (app/main.py) and the recorder
(app/recorder.py) call `install_publisher()` when they start.
"""

from __future__ import annotations

from typing import Any

from app import dispatch
from app.constants import Tier
from app.engine import publish
from app.engine.celery_app import celery_app
from app.engine.policy import POLICIES

app = celery_app


def _publish(name: str, *, kwargs: dict[str, Any], triggered_by: str | None, tier: Tier | None) -> str:
    return publish.dispatch(name, kwargs=kwargs, triggered_by=triggered_by, tier=tier).task_id


def install_publisher() -> None:
    """Make the engine's confirmed publisher the one the domains enqueue through (app/dispatch.py)."""
    dispatch.install(_publish, tasks=POLICIES)


install_publisher()

__all__ = ["app", "celery_app", "install_publisher"]
