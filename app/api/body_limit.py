"""A bound on the size of every request body (413), before anything reads it.

Without one, a client key's POST of a 50 MB `data` field was accepted and stored, and the API process peaked at
about nine times the body's size while FastAPI parsed it (the attacker's outside test): a few such bodies at once
would take the machine's memory. A declared Content-Length over the bound is refused before the body is read; a
body without one (chunked) is counted as it arrives and refused once it passes the bound.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.errors import error_response

CODE = "too_large"


class BodyLimitMiddleware:
    """Answers 413 (the error envelope, code `too_large`) to a request whose body is over API_MAX_BODY_BYTES."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().api_max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, limit)
            return
        received = 0
        over = False

        async def counted() -> Message:
            # Past the bound the body ends there for the route (FastAPI turns an error raised here into its own
            # 400), and whatever the route answers to that cut body is replaced by the 413.
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def answered(message: Message) -> None:
            if not over:
                await send(message)

        await self.app(scope, counted, answered)
        if over:
            await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(
        413, CODE, f"The request body is larger than this API takes ({limit} bytes).", details={"limit_bytes": limit}
    )
    await response(scope, receive, send)
