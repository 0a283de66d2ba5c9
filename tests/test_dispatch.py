"""The domains' enqueue port (app/dispatch.py): work enqueued after commit is published once the caller commits,
never after a rollback; a publish that fails then is logged and leaves the work to its sweeper, and the
callbacks after it still run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app import dispatch, tasks
from app.constants import Tier
from app.errors import ServiceUnavailable


class Broker:
    """A publisher that records what it was given, and refuses task names listed in `down`."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], str | None, Tier | None]] = []
        self.down: set[str] = set()

    def __call__(self, name: str, *, kwargs: dict[str, Any], triggered_by: str | None, tier: Tier | None) -> str:
        if name in self.down:
            raise ServiceUnavailable("The message broker did not confirm the task; nothing was dispatched.")
        self.published.append((name, kwargs, triggered_by, tier))
        return f"task-{len(self.published)}"


@pytest.fixture
def broker() -> Iterator[Broker]:
    installed = Broker()
    dispatch.install(installed, tasks={"a.first", "a.second"})
    yield installed
    tasks.install_publisher()  # the engine's publisher again, for the tests that follow in this process


@pytest.fixture
def session() -> Iterator[Session]:
    with Session(create_engine("sqlite://")) as session:
        yield session


def test_work_enqueued_after_commit_is_published_only_once_the_caller_commits(broker, session):
    session.execute(text("SELECT 1"))
    dispatch.enqueue_after_commit(session, "a.first", kwargs={"id": 1}, triggered_by="me", tier=Tier.low)
    dispatch.enqueue_after_commit(session, "a.second", kwargs={"id": 2}, triggered_by=None)
    assert broker.published == []
    session.commit()
    assert broker.published == [("a.first", {"id": 1}, "me", Tier.low), ("a.second", {"id": 2}, None, None)]
    session.execute(text("SELECT 1"))
    session.commit()
    assert len(broker.published) == 2  # published once, not again on the next commit


def test_a_rollback_publishes_nothing_then_or_at_the_next_commit(broker, session):
    session.execute(text("SELECT 1"))
    dispatch.enqueue_after_commit(session, "a.first", kwargs={"id": 1}, triggered_by="me")
    session.rollback()
    session.execute(text("SELECT 1"))
    session.commit()
    assert broker.published == []


def test_a_publish_that_fails_after_commit_is_left_to_the_sweeper_and_the_next_one_still_goes(broker, session, caplog):
    broker.down.add("a.first")
    failing: list[str] = []
    session.execute(text("SELECT 1"))
    dispatch.enqueue_after_commit(session, "a.first", kwargs={"id": 1}, triggered_by="me")
    dispatch.after_commit(session, lambda: failing.append(str(1 / 0)))
    dispatch.enqueue_after_commit(session, "a.second", kwargs={"id": 2}, triggered_by="me")
    with caplog.at_level(logging.DEBUG, logger="app.dispatch"):
        session.commit()  # neither failure reaches the caller: its transaction is committed
    assert broker.published == [("a.second", {"id": 2}, "me", None)]
    assert "Publishing a.first after commit failed; its sweeper will pick it up." in caplog.messages
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)  # the unexpected one, logged


def test_the_port_knows_the_installed_task_names_and_enqueues_at_once(broker):
    assert dispatch.knows("a.first") and not dispatch.knows("a.missing")
    assert dispatch.enqueue("a.first", kwargs={}, triggered_by="me") == "task-1"
    broker.down.add("a.first")
    with pytest.raises(ServiceUnavailable):
        dispatch.enqueue("a.first", kwargs={}, triggered_by="me")
