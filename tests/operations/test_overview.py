"""The overview reads the broker and Redis before it opens its SQL transaction (the session's own PostgreSQL)."""

from __future__ import annotations

from app.config import get_settings
from app.db import session_scope
from app.engine.inspect import Broker
from app.operations import service


class _WatchedBroker:
    """The real broker's queue figures, noting whether the caller's session held a transaction open meanwhile."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.in_transaction: list[bool] = []

    def queues(self) -> list[object]:
        self.in_transaction.append(self.session.in_transaction())  # type: ignore[attr-defined]
        return Broker(get_settings()).queues()


def test_the_overview_asks_the_broker_before_it_opens_a_transaction():
    with session_scope() as session:
        broker = _WatchedBroker(session)
        # When the overview is read on a fresh session (the API's, once its key is cached)
        found = service.overview(session=session, broker=broker, window_s=300)
        # Then the management API was asked with no transaction held open on a pooled connection
        assert broker.in_transaction == [False]
        assert {q.name for q in found.queues} >= {"high", "medium", "low"}
