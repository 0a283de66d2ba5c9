"""Work that must wait for a commit: callbacks run after the session commits, and are dropped on rollback.

Publishing a task before the rows it reads are committed lets a fast worker miss them; publishing after commit
can lose the publish if the process dies in between, which is why every delivery also has a sweeper
(`integrations.dispatch_pending`) that publishes the ones left without a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

_KEY = "courier_after_commit"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once `session` commits (never if it rolls back)."""
    session.info.setdefault(_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_callbacks(session: Session) -> None:
    for callback in session.info.pop(_KEY, []):
        try:
            callback()
        except Exception:
            logger.exception("An after-commit callback failed; the sweeper will pick up what it left undone.")


@event.listens_for(Session, "after_rollback")
def _drop_callbacks(session: Session) -> None:
    session.info.pop(_KEY, None)
