"""Idempotency-Key handling: the same key and body returns the first answer; another body is a 422.

`once` is the protocol every idempotent entry point runs (the dispatching routes, `dispatch_once`): claim the key
before doing anything, replay the stored answer of an earlier identical request, run the action, then store its
answer, or release the key when the action failed so the client may retry with it. A route that writes rows
before it publishes claims the key before the rows are written, so a repeat never writes them twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import quote

import redis
from anyio import to_thread

from app.config import get_settings
from app.constants import IDEMPOTENCY_KEY
from app.errors import Conflict, ServiceUnavailable, Unprocessable
from app.redis_store import get_redis

logger = logging.getLogger(__name__)

_PENDING = "pending"
#: How long a claim lives before its answer is stored: far above the longest action (SQL writes and a confirmed
#: publish, each bounded by its timeout), far below IDEMPOTENCY_TTL_S. A claim whose release failed (Redis lost
#: mid-request, as in a Sentinel failover) then blocks retries with its key for a minute, not for a day.
PENDING_CLAIM_TTL_S = 60
_STORE_DOWN = "The idempotency store (Redis) is unreachable; nothing was done."


def _redis_key(owner: str, key: str) -> str:
    """Where (owner, key) lives. The owner is percent-encoded: a key name may hold ':' (the separator), and owner
    `svc` with key `prod:k` must never share a slot with owner `svc:prod` and key `k` (it would be answered with
    the other caller's first answer, or refused 422). A name without ':', '%' or the like reads as before."""
    return IDEMPOTENCY_KEY.format(owner=quote(owner, safe=""), key=key)


def fingerprint(route: str, body: Any) -> str:
    """A stable digest of what was asked: the route and the canonical JSON of the body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


def begin(*, owner: str, key: str, digest: str) -> dict[str, Any] | None:
    """Claim `key` for this request; returns the first answer when the same request was already served.

    Raises:
        Unprocessable: the key was used with a different request.
        Conflict: the first request with this key is still in flight.
    """
    redis_key = _redis_key(owner, key)
    claim = json.dumps({"fingerprint": digest, "status": _PENDING})
    if get_redis().set(redis_key, claim, nx=True, ex=min(PENDING_CLAIM_TTL_S, get_settings().idempotency_ttl_s)):
        return None
    stored = json.loads(get_redis().get(redis_key) or claim)
    if stored.get("fingerprint") != digest:
        raise Unprocessable(
            "This Idempotency-Key was already used with a different request; use a new key.",
            details={"idempotency_key": key},
        )
    if stored.get("status") == _PENDING:
        raise Conflict("A request with this Idempotency-Key is still being processed; retry shortly.")
    return dict(stored["response"])


def complete(*, owner: str, key: str, digest: str, response: dict[str, Any]) -> None:
    """Store the answer to replay for later requests with the same key."""
    value = json.dumps({"fingerprint": digest, "status": "done", "response": response})
    get_redis().set(_redis_key(owner, key), value, ex=get_settings().idempotency_ttl_s)


def abandon(*, owner: str, key: str) -> None:
    """Release the claim after a failure, so the client may retry with the same key."""
    get_redis().delete(_redis_key(owner, key))


def _store_down(exc: redis.RedisError) -> Exception:
    return ServiceUnavailable(_STORE_DOWN)


async def once(
    *,
    owner: str,
    key: str | None,
    route: str,
    body: Any,
    action: Callable[[], Awaitable[dict[str, Any]]],
    unreachable: Callable[[redis.RedisError], Exception] = _store_down,
) -> dict[str, Any]:
    """Run `action` once per (owner, key); a repeat with the same `body` gets the first answer.

    Without a key the action just runs. The Redis calls run in the thread pool, off the event loop.

    Parameters:
        owner: whose key it is (the caller's principal name): two callers never share a key.
        key: the client's Idempotency-Key, or None.
        route: names what is asked (with `body`, the request's fingerprint).
        body: the request as JSON values; a repeat with another body is a 422.
        action: does the work and returns the JSON answer that is stored for repeats.
        unreachable: builds the error raised when the key cannot be claimed because Redis is down
            (by default a 503 saying nothing was done).

    Raises:
        Unprocessable: the key was used with a different request.
        Conflict: the first request with this key is still in flight.
    """
    if key is None:
        return await action()
    digest = fingerprint(route, body)
    try:
        first = await to_thread.run_sync(partial(begin, owner=owner, key=key, digest=digest))
    except redis.RedisError as exc:
        raise unreachable(exc) from exc
    if first is not None:
        return first
    try:
        answer = await action()
    except BaseException:
        # The action's own error is the answer. A release Redis refuses (it went away meanwhile) must not replace
        # it: the claim then lapses after PENDING_CLAIM_TTL_S, and a retry with the key is a 409 until it does.
        try:
            await to_thread.run_sync(partial(abandon, owner=owner, key=key))
        except redis.RedisError as exc:
            logger.warning("Could not release Idempotency-Key claim after a failed request: %s", type(exc).__name__)
        raise
    try:
        await to_thread.run_sync(partial(complete, owner=owner, key=key, digest=digest, response=answer))
    except redis.RedisError as exc:
        # The action is done (a dispatch RabbitMQ confirmed, rows committed): its answer is the truth, never a 503
        # saying nothing was done. Only the stored answer is missing: a repeat with the key is a 409 while the
        # claim lives (PENDING_CLAIM_TTL_S), then runs as a new request.
        logger.warning(
            "Could not store the answer of an Idempotency-Key request that succeeded: %s", type(exc).__name__
        )
    return answer
