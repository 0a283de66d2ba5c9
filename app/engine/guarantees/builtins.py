"""Celery's built-in tasks are not Courier's: a message naming one is an unknown task.

Celery registers its canvas helpers (`celery.map`, `celery.starmap`, `celery.chunks`, `celery.accumulate`,
`celery.group`, `celery.chain`, `celery.chord`, `celery.chord_unlock`) and `celery.backend_cleanup` in every app.
Courier dispatches none of them, yet a publisher with broker credentials could run them: `celery.map` calls any
registered task inside the worker, with arguments no API schema checked and outside the start check, revocation
and time limits of that task's own message (the attacker's outside test ran `celery.map`, `celery.accumulate` and
`celery.backend_cleanup` to SUCCESS). Unregistered, such a message is dead-lettered `unknown_task`, as any other
name the worker does not know.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

BUILTIN_PREFIX = "celery."


def unregister_builtins(sender: Celery, **_: Any) -> None:
    """Drop every `celery.*` task from the app's registry (connected to `on_after_finalize`, which Celery sends
    once its shared tasks, the built-ins among them, are registered)."""
    for name in [name for name in sender.tasks if name.startswith(BUILTIN_PREFIX)]:
        sender.tasks.unregister(name)


def install(app: Celery) -> None:
    """Unregister the built-ins when `app` is finalized (every process: the worker builds its strategies after)."""
    app.on_after_finalize.connect(unregister_builtins, weak=False)
