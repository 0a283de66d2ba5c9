"""API start-up: each process opens its connections and builds its routes before the first request, which
otherwise waited 300 ms for them (3 ms for the next), then keeps what it built out of full garbage collections."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient


def test_the_api_is_connected_before_its_first_request():
    from app.db import get_engine, reset_engine
    from app.engine import publish
    from app.main import app

    # Given a process with no connection open yet
    reset_engine()
    publish._publisher.cache_clear()
    publish._async_redis.cache_clear()
    # When the API starts (and before any request)
    with TestClient(app):
        publisher = publish._publisher()
        # Then the publishing connection and its confirm channels are open, and a database connection waits
        assert publisher._connection is not None and not publisher._connection.is_closed
        assert len([c for c in publisher._channels if not c.is_closed]) == publisher.channel_count
        assert get_engine().pool.checkedin() >= 1


def test_what_start_up_built_is_left_out_of_full_garbage_collections():
    from app.main import app

    # Given a process whose objects are all tracked by the garbage collector
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # When the API starts
    with TestClient(app):
        # Then what start-up built is frozen: a full collection scans only what came after
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())
        # and a request's garbage is still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
