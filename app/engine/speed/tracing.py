"""Bounded reprs of task values from the builtin `repr`, where Celery takes `saferepr` on every task.

- Celery's tracer, in the pool child, takes `saferepr` of every successful task's return value and sends that
  text back to the worker's main process, where only the success log line ("Task ... succeeded in ...:
  <repr>") and the `task-succeeded` event read it. saferepr walks the value in Python, a noticeable share of a
  pool child's time per short task.
- Each message's `argsrepr` and `kwargsrepr` headers (app/engine/speed/amqp_async.py).

`bounded_repr` gives the same bounded text from the builtin `repr`, which is written in C, and falls back to
saferepr for a value whose `repr` raises. Unlike saferepr it builds the whole text before cutting it: for a
result, no more than the JSON the backend has just encoded from the same value.
"""

from __future__ import annotations

from typing import Any

from celery.app import trace
from celery.utils.saferepr import saferepr

#: What a truncated repr ends with (as saferepr's).
ELLIPSIS = "..."


def bounded_repr(value: Any, maxlen: int = 1024) -> str:
    """`repr(value)`, cut to `maxlen` characters; saferepr's text when `repr` raises."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__: saferepr reports it instead of raising
        return str(saferepr(value, maxlen))
    if len(text) <= maxlen:
        return text
    return text[: max(0, maxlen - len(ELLIPSIS))] + ELLIPSIS


def install() -> None:
    """Have Celery's tracer use `bounded_repr` (its tracer looks the name up in its module on every task)."""
    trace.saferepr = bounded_repr
