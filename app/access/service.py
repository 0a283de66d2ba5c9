"""API keys: create, revoke, and authenticate with a short in-process cache off the database hot path."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.access.exceptions import DuplicateKeyName, UnknownKey
from app.access.models import ApiKey, Role
from app.access.schemas import Principal
from app.audit import service as audit_service
from app.db import utcnow

KEY_PREFIX = "ck_"


def hash_key(key: str) -> str:
    """SHA-256 of a key. Keys carry 256 bits of randomness, so a fast hash is the right one."""
    return hashlib.sha256(key.encode()).hexdigest()


def create(*, session: Session, name: str, role: Role, actor: Principal | str = "cli") -> tuple[ApiKey, str]:
    """Create a key (recorded in the audit trail); returns the row and the plain key, which is never stored."""
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise DuplicateKeyName(name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, role=role, prefix=plain[:10], key_hash=hash_key(plain))
    session.add(row)
    session.flush()
    _audit(session, actor, "api_key.create", row)
    return row, plain


def revoke(*, session: Session, name: str, actor: Principal | str = "cli") -> ApiKey:
    """Revoke a key by name (recorded in the audit trail); it stops working once caches expire (API_KEY_CACHE_S)."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise UnknownKey(name)
    row.revoked_at = utcnow()
    _audit(session, actor, "api_key.revoke", row)
    return row


def _audit(session: Session, actor: Principal | str, action: str, row: ApiKey) -> None:
    details = {"name": row.name, "role": str(row.role), "prefix": row.prefix}
    audit_service.record(session=session, actor=actor, action=action, target=f"api_key:{row.name}", details=details)


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, newest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc())))


class KeyCache:
    """Maps a key's hash to its principal for `ttl` seconds, so most requests never touch SQL."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        """(hit, principal) for a key's hash; a hit may be a remembered 'unknown key' (None)."""
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def remember(self, digest: str, principal: Principal | None) -> None:
        """Keep a lookup's answer for `ttl` seconds."""
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, principal)


def lookup(*, session: Session, digest: str) -> Principal | None:
    """The principal of an active key, by the hash of the key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
    return Principal(row.id, row.name, Role(row.role)) if row is not None else None


def get_active(*, session: Session, key_id: int) -> Principal | None:
    """The principal of an active key, by its id (a console session names its key by id, never by the key)."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.name, Role(row.role))
