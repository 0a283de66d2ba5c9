"""Input that no database column can hold, refused once for every route (installed on the map, router.py).

PostgreSQL's text types cannot contain the NUL character (U+0000): a NUL in a query parameter, a path segment
or a string of a JSON body reached the driver and ended in a 500 ("PostgreSQL text fields cannot contain NUL
(0x00) bytes"), found by the fuzz run (tests/api/test_fuzz.py). SQLite stores it, so refusing it is also what
keeps both databases answering alike. Integers are bounded by their types instead (app/schema_types.py).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from app.errors import Unprocessable

NUL = "\x00"


class NulCharacter(Unprocessable):
    """A string of the request contains U+0000."""

    code = "nul_character"

    def __init__(self, where: str) -> None:
        super().__init__(f"Text may not contain the NUL character (U+0000); found in {where}.", details={"in": where})


async def reject_nul_characters(request: Request) -> None:
    """Refuse (422) a request whose path, query or JSON body carries U+0000 anywhere in its text."""
    if NUL in request.url.path:
        raise NulCharacter("the path")
    if any(NUL in key or NUL in value for key, value in request.query_params.multi_items()):
        raise NulCharacter("the query")
    body = await request.body()  # (already read by FastAPI for the body parameter: cached, no second read)
    # A JSON string can carry NUL only as the escape \u0000 (a raw control character is invalid JSON), so the
    # body is parsed again only when that escape appears at all.
    if b"\\u0000" in body and _contains_nul(_loads(body)):
        raise NulCharacter("the body")


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None  # not JSON: the body parameter's own validation answers


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(NUL in key or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False
