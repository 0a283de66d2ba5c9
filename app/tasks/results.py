"""CourierRedisBackend: Celery's Redis result backend, storing each result in one round trip.

Celery's backend reads the current result before writing (so a duplicate run never overwrites SUCCESS), then
writes it: two round trips per task, and a race between them. Here one Lua script does both atomically. The
benchmark's profile of a worker child showed result storage at about 40 % of its time, most of it waiting
on those round trips.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.commands.core import Script

from app.config import get_settings
from app.constants import HISTORY_STREAM, HISTORY_STREAM_MAX_LENGTH
from app.redis_store import get_redis
from app.runs import journal

#: Journal the outcome (when given) for the run history; refuse to overwrite a SUCCESS result; otherwise store
#: (with a TTL when given) and publish, as Celery does. KEYS: result key, history stream. ARGV: value, TTL,
#: journal entry or "", the stream's approximate cap.
STORE_SCRIPT = """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and decoded['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class CourierRedisBackend(RedisBackend):  # type: ignore[misc]
    """Selected with `result_backend = "app.tasks.results:CourierRedisBackend+redis://..."`."""

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
        shared = entry is not None and _journal_shares_this_redis()
        self.ensure(
            self._store_once, (self.get_key_for_task(task_id), value, int(expires or 0), entry if shared else None)
        )
        if entry is not None and not shared:  # REDIS_URL names another Redis: one more round trip
            get_redis().xadd(HISTORY_STREAM, {journal.FIELD: entry}, **journal.xadd_args())
        return result

    @cached_property
    def _store_script(self) -> Script:
        """STORE_SCRIPT on this backend's client: EVALSHA, loading the script again if Redis forgot it."""
        script: Script = self.client.register_script(STORE_SCRIPT)
        return script

    def _store_once(self, key: bytes, value: Any, expires: int, entry: str | None) -> None:
        self._store_script(keys=[key, HISTORY_STREAM], args=[value, expires, entry or "", HISTORY_STREAM_MAX_LENGTH])

    @staticmethod
    def _journal_entry(task_id: str, state: str, result: Any, traceback: Any, request: Any) -> str | None:
        if not get_settings().history_enabled:
            return None
        return journal.outcome(task_id=task_id, state=state, result=result, traceback=traceback, request=request)


@lru_cache
def _journal_shares_this_redis() -> bool:
    """Whether Courier's Redis (the journal's) is the result backend's, so one script can write both."""
    settings = get_settings()
    return settings.redis_dsn == settings.result_backend_dsn
