"""CourierRedisBackend: Celery's Redis result backend, storing each result and its run-history entry atomically.

Celery's backend reads the current result before writing (so a duplicate run never overwrites SUCCESS), then
writes it: two round trips per task, and a race between them. Here one Lua script does both atomically and
appends the run's outcome to the history stream in the same step (app/runs/journal.py), for one result or for a
batch, so a stored result always has its history entry. This is the engine's correctness part of result
storage and runs in both engine modes; the speed layer's subclass (app/engine/speed/results.py) adds the batching
of SUCCESS results by the worker's main process and a cheaper result meta.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.commands.core import Script

from app.config import get_settings
from app.constants import HISTORY_STREAM, HISTORY_STREAM_MAX_LENGTH
from app.engine.guarantees import outages, starts
from app.engine.guarantees.starts import Answer
from app.redis_store import get_redis, shares_result_backend
from app.runs import journal

logger = logging.getLogger(__name__)

#: A result to store: (result key, encoded value, TTL in seconds or 0, history entry or None).
Deferred = tuple[bytes, str, int, str | None]

#: For each result: journal its outcome (when given) for the run history; refuse to overwrite a SUCCESS result;
#: otherwise store it (with a TTL when given) and publish it, as Celery does. KEYS: the history stream, then one
#: result key per result. ARGV: the stream's approximate cap, then (value, TTL or 0, journal entry or "") per
#: result. Returns how many results were stored.
STORE_SCRIPT = """
local stored = 0
for i = 2, #KEYS do
  local at = 3 * (i - 2) + 2
  local value, ttl, entry = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
  if entry ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', entry)
  end
  local final = false
  local current = redis.call('GET', KEYS[i])
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    final = ok and type(decoded) == 'table' and decoded['status'] == 'SUCCESS'
  end
  if not final then
    if ttl > 0 then
      redis.call('SETEX', KEYS[i], ttl, value)
    else
      redis.call('SET', KEYS[i], value)
    end
    redis.call('PUBLISH', KEYS[i], value)
    stored = stored + 1
  end
end
return stored
"""


class CourierRedisBackend(RedisBackend):  # type: ignore[misc]
    """Selected by app/engine/install.py (`result_backend = "<module>:<class>+redis://..."`)."""

    def _store_result(
        self, task_id: Any, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        entry = self._journal_entry(bytes_to_str(task_id), state, result, traceback, request)
        deferred: Deferred = (self.get_key_for_task(task_id), value, int(expires or 0), entry)
        self._keep(bytes_to_str(task_id), deferred, state, request)
        return result

    def _keep(self, task_id: str, deferred: Deferred, state: str, request: Any) -> None:
        """Store one result now (the speed layer's subclass may defer a SUCCESS to the worker's main process)."""
        if state == states.RETRY:
            try:
                self.ensure(self.store_many, ([deferred],))
            except outages.OUTAGE_ERRORS as exc:
                # The retry is already published: failing here would make the worker put this attempt back too,
                # and the task would run twice from here on. RETRY is only a progress mark; the next outcome wins.
                logger.warning("Could not store the RETRY state of task %s (Redis unreachable: %r).", task_id, exc)
        else:
            self.ensure(self.store_many, ([deferred],))

    def store_many(self, deferred: list[Deferred], attempts: list[tuple[str, int]] | None = None) -> list[Answer]:
        """Store results (and journal their outcomes) with STORE_SCRIPT, and check the start of `attempts`
        (app/engine/guarantees/starts.py), returning their answers: one round trip when Courier's Redis is this one,
        else one each. Attempts are checked here only by the speed layer's pools (app/engine/speed/pool.py)."""
        shared = shares_result_backend()
        args: list[Any] = [HISTORY_STREAM_MAX_LENGTH]
        for _, value, expires, entry in deferred:
            args += [value, expires, (entry or "") if shared else ""]
        keys: list[str | bytes] = [HISTORY_STREAM, *(key for key, *_ in deferred)]
        answers: list[Answer] = []
        if attempts and shared:
            pipe = self.client.pipeline(transaction=False)
            if deferred:  # EVAL: a pipeline cannot reload a script Redis forgot
                pipe.eval(STORE_SCRIPT, len(keys), *keys, *args)
            starts.queue(pipe, attempts)
            answers = starts.parse(pipe.execute()[-1])
        elif deferred:
            self._store_script(keys=keys, args=args)
        if attempts and not shared:  # REDIS_URL names another Redis: the checks go there
            answers = starts.check(attempts)
        entries = [entry for *_, entry in deferred if entry is not None]
        if entries and not shared:  # and so does the journal
            pipe = get_redis().pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(HISTORY_STREAM, {journal.FIELD: entry}, **journal.xadd_args())
            pipe.execute()
        return answers

    @cached_property
    def _store_script(self) -> Script:
        """STORE_SCRIPT on this backend's client: EVALSHA, loading the script again if Redis forgot it."""
        script: Script = self.client.register_script(STORE_SCRIPT)
        return script

    @staticmethod
    def _journal_entry(task_id: str, state: str, result: Any, traceback: Any, request: Any) -> str | None:
        if not get_settings().history_enabled:
            return None
        return journal.outcome(task_id=task_id, state=state, result=result, traceback=traceback, request=request)
