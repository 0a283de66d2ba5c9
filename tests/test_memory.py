"""A worker keeps its start-up objects out of full garbage collections (app/memory.py): before its pool forks,
so the children inherit the frozen set, and once its main process has built its consumer and pool."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from celery import signals


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("signal", ["worker_init", "worker_ready"])
def test_a_worker_freezes_what_it_built_before_its_pool_forks_and_once_ready(signal, unfrozen):
    from app.engine.celery_app import celery_app  # noqa: F401 (its module connects the receivers)

    # Given a process whose objects are all tracked by the garbage collector
    assert gc.get_freeze_count() == 0
    # When Celery sends the signal
    getattr(signals, signal).send(sender=None)
    # Then what exists is frozen: a full collection scans only what comes after
    assert gc.get_freeze_count() > 10 * len(gc.get_objects())
