"""BatchingRedisBackend: Courier's result backend, with SUCCESS results stored by the worker's main process.

Stock, a task's SUCCESS result costs its pool child a Redis round trip of its own, and a pool child of short
tasks spends much of its time waiting on those round trips. Here a
SUCCESS stored in a pool child of Courier's pools goes into the attempt's HandOff instead, and the main process
stores every result that came back in one turn of its event loop with one call (app/engine/speed/pool.py), before
it acks their messages. What is stored, and the history entry with it, is CourierRedisBackend's
(app/engine/guarantees/results.py). The result meta is also built without Celery's two settings lookups per call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from celery import states
from celery.backends.redis import SentinelBackend

from app.engine.guarantees.results import CourierRedisBackend, Deferred
from app.engine.speed.pool import HandOff


class BatchingRedisBackend(CourierRedisBackend):
    """Selected by app/engine/install.py when the speed patches are on."""

    def _keep(self, task_id: str, deferred: Deferred, state: str, request: Any) -> None:
        handoff = HandOff.of(request)
        if handoff is not None and state == states.SUCCESS:
            handoff.collected.append(deferred)  # stored by the worker's main process with others
            return
        super()._keep(task_id, deferred, state, request)

    def _get_result_meta(
        self, result: Any, state: str, traceback: Any, request: Any, format_date: bool = True, encode: bool = False
    ) -> dict[str, Any]:
        """Celery's result meta (extended: name, args, worker, ...), built without Celery's two settings lookups
        per call (`result_extended` by name, and the app's time zone for `date_done`): a tenth of a pool child's
        time per no-op task. Stamped requests, and the forms that encode args or keep a datetime, take Celery's."""
        celerys = not format_date or encode or not self._extended_with_utc or getattr(request, "stamps", None)
        if celerys:
            return dict(super()._get_result_meta(result, state, traceback, request, format_date, encode))
        meta: dict[str, Any] = {
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": self.current_task_children(request),
            "date_done": datetime.now(UTC).isoformat() if state in self.READY_STATES else None,
        }
        if request is None:
            return meta
        for field, attribute in (("group_id", "group"), ("parent_id", "parent_id")):
            if value := getattr(request, attribute, None):
                meta[field] = value
        delivery = getattr(request, "delivery_info", None)
        meta.update(
            name=getattr(request, "task", None),
            args=getattr(request, "args", None),
            kwargs=getattr(request, "kwargs", None),
            worker=getattr(request, "hostname", None),
            retries=getattr(request, "retries", None),
            queue=delivery.get("routing_key") if delivery else None,
        )
        return meta

    @cached_property
    def _extended_with_utc(self) -> bool:
        """Whether results are extended and dated in UTC (Courier's settings; the fast meta assumes both)."""
        return bool(self.app.conf.result_extended) and str(self.app.timezone) == "UTC"


class BatchingSentinelBackend(BatchingRedisBackend, SentinelBackend):  # type: ignore[misc]
    """BatchingRedisBackend on the primary the Sentinels name (REDIS_SENTINELS)."""
