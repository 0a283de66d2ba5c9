"""Courier's Celery side. `celery -A app.tasks ...` resolves `app` below (Celery's find_app looks for it)."""

from app.engine.celery_app import celery_app

app = celery_app

__all__ = ["app", "celery_app"]
