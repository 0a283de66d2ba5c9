"""Hourly rate limits in Redis (fixed windows): password-reset requests per address, MFA challenges per user."""

from __future__ import annotations

import time

from app.constants import REDIS_PREFIX
from app.identity.exceptions import RateLimited
from app.redis_store import get_redis

#: `courier:ratelimit:<scope>:<subject>:<window start>` → requests in that hour (TTL: the rest of the window).
RATE_LIMIT_KEY = REDIS_PREFIX + "ratelimit:{scope}:{subject}:{window}"
WINDOW_S = 3600


def hit(*, scope: str, subject: str, limit: int, what: str) -> None:
    """Count one request of `scope` for `subject`; over `limit` in this hour raises RateLimited (429).

    `subject` must not be a secret or an address in clear (callers pass ids or digests): it is a Redis key.
    """
    now = int(time.time())
    window = now - now % WINDOW_S
    key = RATE_LIMIT_KEY.format(scope=scope, subject=subject, window=window)
    pipe = get_redis().pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, WINDOW_S + 60)
    count, _ = pipe.execute()
    if count > limit:
        retry_after = window + WINDOW_S - now
        raise RateLimited(f"Too many {what} in this hour; retry in {retry_after} s.", retry_after=max(1, retry_after))
