"""The CourierError tree and the one JSON error envelope every 4xx/5xx answer uses."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnreachable
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import redis_store
from app.logging import StateChangeLog

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What went wrong: a stable machine code, a sentence for people, optional details."""

    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The envelope of every error answer: `{"error": {...}}`."""

    error: ErrorBody


class CourierError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(CourierError):
    """The thing asked for does not exist (or the caller may not know it does)."""

    status_code = 404
    code = "not_found"


class Conflict(CourierError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class Unprocessable(CourierError):
    """The request is well-formed but cannot be honoured as sent."""

    status_code = 422
    code = "unprocessable"


class Unauthenticated(CourierError):
    """No valid API key."""

    status_code = 401
    code = "unauthenticated"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(CourierError):
    """The key's role does not allow this."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(CourierError):
    """The caller holds too many of something at once; retry after `retry_after` seconds."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int = 5, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailable(CourierError):
    """A dependency (broker, Redis) is down; nothing was accepted. Retry after a pause."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.headers = {"Retry-After": str(retry_after)}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build the envelope."""
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


#: What each error status means, as the OpenAPI spec describes it.
_DESCRIPTIONS = {
    400: "The request cannot be honoured as sent: a body that is not UTF-8 text (`bad_request`), or a route's own "
    "refusal (`invalid_token`, `invalid_code`, `code_expired`).",
    401: "No API key, or an unknown or revoked one.",
    403: "The key's role does not allow this.",
    404: "Not found (or not visible to this key).",
    409: "Conflicts with the current state (a duplicate, a state that no longer allows it, a confirmation).",
    422: "The request is invalid; `details` lists what, and where.",
    429: "Too many requests of this kind; retry after `Retry-After` seconds.",
    503: "A dependency (broker, Redis, management API) is unavailable; nothing was done. Retry after `Retry-After`.",
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}

#: Headers each error status carries (declared, so a client and the fuzz run can rely on them).
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of error answers, each with the envelope (ErrorResponse) and its headers.

    Examples:
        @router.post("/x", responses=error_responses(404, 409))
    """
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        declared[status] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status in _HEADERS:
            declared[status]["headers"] = _HEADERS[status]
    return declared


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
}


class Outage:
    """A dependency whose outage a route meets in the middle of its work: its errors answer 503 with Retry-After
    (the request changed nothing it can keep: a session rolls back, a dispatch publishes nothing), and the outage
    is logged when it starts, every OUTAGE_LOG_INTERVAL_S while it lasts, and when the health check sees the
    dependency answer again, rather than as a 500 and a traceback per request.
    """

    def __init__(self, what: str, errors: tuple[type[Exception], ...]) -> None:
        self.what = what
        self.errors = errors
        self.log = StateChangeLog(logger, what, consequence="requests that need it answer 503")

    async def answer(self, request: Request, exc: Exception) -> JSONResponse:
        """The 503 for `exc`, raised by a route that needed this dependency."""
        self.log.failed(f"{request.method} {request.url.path}: {type(exc).__name__}")
        message = f"{self.what} is unavailable; nothing was done. Retry after a pause."
        return error_response(503, "unavailable", message, headers={"Retry-After": "5"})


#: Redis (task status, idempotency keys, rate limits, revocations), SQL, and the broker (a revoke's broadcast,
#: inspect) as routes meet them. Redis's own errors that are not outages (a wrong type, a script error) stay 500s.
REDIS = Outage("Redis", redis_store.OUTAGE_ERRORS)
DATABASE = Outage(
    "The database",
    (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError),
)
BROKER = Outage("The message broker", (BrokerUnreachable,))
OUTAGES = (REDIS, DATABASE, BROKER)


def register(app: FastAPI) -> None:
    """Install the handlers that turn every error into the envelope; nothing from outside yields a bare 500."""

    @app.exception_handler(CourierError)
    async def _courier(_: Request, exc: CourierError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in exc.errors()
        ]
        return error_response(422, "validation_error", "The request is invalid; see details.", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    for outage in OUTAGES:
        for error in outage.errors:
            app.add_exception_handler(error, outage.answer)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s %s.", request.method, request.url.path)
        return error_response(500, "internal_error", "Courier hit an unexpected error; it has been logged.")
