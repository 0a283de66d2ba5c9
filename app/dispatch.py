"""The one enqueue port of the domains: enqueue a named task with its kwargs, now or after the caller's commit.

Domains know task names, never Celery. The adapters install the engine's confirmed publisher here when their
process starts (`install_publisher()` in app/tasks/__init__.py: the worker, the API and the recorder).

After-commit work goes through one outbox kept in the session (`after_commit`): callbacks run once the caller's
transaction commits, in the order they were added, and are dropped if it rolls back. Publishing before the rows a
task reads are committed lets a fast worker miss them; publishing after the commit can lose the publish if the
process dies in between (or the broker is down), which is why every kind of work enqueued this way also has a
sweeper that publishes what was left without a task (notifications: `process_scheduled_notifications`; webhook
deliveries: `integrations.dispatch_pending`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.constants import Tier
from app.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

_OUTBOX = "courier_after_commit"


class Publisher(Protocol):
    """Publishes task `name` and waits for the broker's confirm; returns the task id.

    Raises ServiceUnavailable when the broker or Redis is unreachable (nothing was published)."""

    def __call__(self, name: str, *, kwargs: dict[str, Any], triggered_by: str | None, tier: Tier | None) -> str: ...


@dataclass(frozen=True)
class _Installed:
    publish: Publisher
    tasks: frozenset[str]


_installed: list[_Installed] = []


def install(publisher: Publisher, *, tasks: Collection[str]) -> None:
    """Make `publisher` the one this process enqueues through; `tasks` are the task names it can publish."""
    _installed[:] = [_Installed(publisher, frozenset(tasks))]


def _current() -> _Installed:
    if not _installed:
        raise RuntimeError("No publisher is installed: the process's adapter must call app.dispatch.install first.")
    return _installed[0]


def knows(name: str) -> bool:
    """Whether a task named `name` exists in this deployment."""
    return name in _current().tasks


def enqueue(name: str, *, kwargs: dict[str, Any], triggered_by: str | None, tier: Tier | None = None) -> str:
    """Publish task `name` now (confirmed) and return its task id.

    Raises:
        ServiceUnavailable: the broker or Redis is unreachable; nothing was published.
    """
    return _current().publish(name, kwargs=kwargs, triggered_by=triggered_by, tier=tier)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once `session` commits (never if it rolls back). A callback that raises is logged and the
    others still run: what it left undone is the sweeper's."""
    session.info.setdefault(_OUTBOX, []).append(callback)


def enqueue_after_commit(
    session: Session, name: str, *, kwargs: dict[str, Any], triggered_by: str | None, tier: Tier | None = None
) -> None:
    """Publish task `name` once `session` commits. A publish that fails then is logged and left to the sweeper."""

    def publish() -> None:
        try:
            enqueue(name, kwargs=kwargs, triggered_by=triggered_by, tier=tier)
        except ServiceUnavailable:
            # The broker or Redis is down (the publisher logs the outage once, not per message).
            logger.debug("Publishing %s after commit failed; its sweeper will pick it up.", name)

    after_commit(session, publish)


@event.listens_for(Session, "after_commit")
def _run_outbox(session: Session) -> None:
    for callback in session.info.pop(_OUTBOX, []):
        try:
            callback()
        except Exception:
            logger.exception("An after-commit callback failed; the sweeper will pick up what it left undone.")


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
