"""Idempotency-Key handling: the same key and body returns the first answer; another body is a 422."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from app.config import get_settings
from app.constants import IDEMPOTENCY_KEY
from app.errors import Conflict, Unprocessable
from app.redis_store import get_redis

_PENDING = "pending"


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
    redis_key = IDEMPOTENCY_KEY.format(owner=owner, key=key)
    claim = json.dumps({"fingerprint": digest, "status": _PENDING})
    if get_redis().set(redis_key, claim, nx=True, ex=get_settings().idempotency_ttl_s):
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
    get_redis().set(IDEMPOTENCY_KEY.format(owner=owner, key=key), value, ex=get_settings().idempotency_ttl_s)


def abandon(*, owner: str, key: str) -> None:
    """Release the claim after a failure, so the client may retry with the same key."""
    get_redis().delete(IDEMPOTENCY_KEY.format(owner=owner, key=key))
