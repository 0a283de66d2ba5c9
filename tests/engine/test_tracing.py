"""The result repr Celery's tracer sends back to the worker's main process, from the builtin repr."""

from __future__ import annotations

from celery import signals
from celery.app import trace
from celery.utils.saferepr import saferepr

from app.config import get_settings
from app.engine.speed import tracing


def test_a_result_is_represented_as_repr_does_cut_to_the_limit():
    value = {"pong": True, "echo": None, "worker": "medium@host"}
    assert tracing.bounded_repr(value) == repr(value)
    long = list(range(1000))
    text = tracing.bounded_repr(long, 50)
    assert len(text) == 50 and text.endswith("...") and text.startswith("[0, 1, 2")


def test_a_broken_repr_is_reported_not_raised():
    class Broken:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    assert "Unrepresentable" in tracing.bounded_repr(Broken())


def test_the_worker_has_celerys_tracer_use_it_unless_the_speed_patches_are_off():
    """Installed when the worker starts (worker_init, before the pool forks), not in every process; with
    ENGINE_SPEED_PATCHES=off Celery's tracer keeps its own saferepr."""
    original = trace.saferepr
    try:
        trace.saferepr = saferepr
        signals.worker_init.send(sender=None)
        assert trace.saferepr is (tracing.bounded_repr if get_settings().engine_speed_patches else saferepr)
    finally:
        trace.saferepr = original
