"""Idempotency-Key for dispatching routes that also create rows (a user, a notification) before publishing.

`publish.dispatch_once` covers routes whose only effect is the publish. When a route first writes rows and
then publishes, the key must be claimed *before* the rows are written, or a repeat would write them twice;
`run` does that with the same store (app/idempotency.py): the same key and body return the first answer, the
same key with another body is a 422, and a failed first attempt releases the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis
from fastapi.concurrency import run_in_threadpool

from app import idempotency
from app.errors import ServiceUnavailable


async def run(
    *,
    owner: str,
    key: str | None,
    route: str,
    body: Any,
    action: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run `action` once per (owner, key); a repeat with the same `body` gets the first answer."""
    if key is None:
        return await action()
    digest = idempotency.fingerprint(route, body)
    try:
        first = await run_in_threadpool(idempotency.begin, owner=owner, key=key, digest=digest)
    except redis.RedisError as exc:
        raise ServiceUnavailable("The idempotency store (Redis) is unreachable; nothing was done.") from exc
    if first is not None:
        return first
    try:
        answer = await action()
    except BaseException:
        await run_in_threadpool(idempotency.abandon, owner=owner, key=key)
        raise
    await run_in_threadpool(idempotency.complete, owner=owner, key=key, digest=digest, response=answer)
    return answer
