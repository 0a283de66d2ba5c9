"""Dependencies shared by the routes, as Annotated aliases: settings, session, principal, idempotency key."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.access import service as access_service
from app.access.schemas import Principal
from app.access.service import KeyCache
from app.audit.context import remember_principal, request_session
from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import Forbidden, Unauthenticated

SettingsDep = Annotated[Settings, Depends(get_settings)]


#: The request's session (app/audit/context.py): one transaction, committed by the audit middleware as it answers.
SessionDep = Annotated[Session, Depends(request_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key made by `python -m app.cli create-api-key`.")


@lru_cache
def _key_cache() -> KeyCache:
    return KeyCache(ttl=get_settings().api_key_cache_s)


def _lookup(digest: str) -> Principal | None:
    with get_sessionmaker()() as session:
        return access_service.lookup(session=session, digest=digest)


#: Methods that read only: the only ones a viewer key may call.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 when missing, unknown or revoked; 403 when a viewer
    key asks for anything but a read (a viewer changes nothing, on any route).

    Async so a cached key costs no thread hop; only a cache miss reads SQL (in the thread pool).
    """
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    digest = access_service.hash_key(credentials.credentials)
    hit, principal = _key_cache().cached(digest)
    if not hit:
        principal = await run_in_threadpool(_lookup, digest)
        _key_cache().remember(digest, principal)
    if principal is None:
        raise Unauthenticated("The API key is unknown or revoked.")
    remember_principal(principal)
    if principal.is_viewer and request.method not in READ_METHODS:
        raise Forbidden("A viewer key reads only; this request changes something and needs an admin key.")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    """The caller, who must hold the admin role, or the viewer role for a read (get_principal refuses a viewer's
    every other request); 403 otherwise."""
    if not principal.reads_everything:
        raise Forbidden("This endpoint needs an admin key.")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Repeat a request safely: the same key and body return the first answer.",
    ),
]
