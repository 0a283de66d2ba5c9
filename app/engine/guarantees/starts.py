"""The check every attempt passes before its body runs: is the task revoked, and how often has this attempt
started? One Redis script answers it for any number of attempts: the worker's main process asks it once per
turn of its event loop for every job it hands to its pool children (app/engine/speed/pool.py); a task run any other
way (eager mode, a stock Celery pool) asks it for itself in `before_start` (app/engine/task.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from redis.client import Pipeline
from redis.commands.core import Script

from app.config import get_settings
from app.constants import REVOKED_KEY, STARTS_KEY
from app.redis_store import get_redis

#: KEYS: per attempt, its revocation key then its start counter. ARGV: the counters' TTL. Returns per attempt
#: {revoked (0/1), starts including this one}.
START_SCRIPT = """
local answers = {}
for i = 1, #KEYS, 2 do
  answers[#answers + 1] = redis.call('EXISTS', KEYS[i])
  answers[#answers + 1] = redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
end
return answers
"""

#: The answer for one attempt: (revoked, how many times it has started, this start included).
Answer = tuple[bool, int]


@lru_cache
def _script() -> Script:
    return get_redis().register_script(START_SCRIPT)


def check(attempts: list[tuple[str, int]]) -> list[Answer]:
    """Count a start of each (task id, retries) attempt and say whether its task is revoked: one round trip."""
    return parse(_script()(keys=_keys(attempts), args=[get_settings().result_expires_s]))


def queue(pipe: Pipeline, attempts: list[tuple[str, int]]) -> None:
    """Add the check of `attempts` to `pipe` (by EVAL: a pipeline cannot load a script Redis forgot); its reply
    goes to `parse`."""
    pipe.eval(START_SCRIPT, 2 * len(attempts), *_keys(attempts), get_settings().result_expires_s)


def parse(answers: list[Any]) -> list[Answer]:
    """The script's flat reply as one Answer per attempt."""
    return [(bool(answers[i]), int(answers[i + 1])) for i in range(0, len(answers), 2)]


def _keys(attempts: list[tuple[str, int]]) -> list[str]:
    keys: list[str] = []
    for task_id, retries in attempts:
        keys += [REVOKED_KEY.format(task_id=task_id), STARTS_KEY.format(task_id=task_id, retries=retries)]
    return keys
