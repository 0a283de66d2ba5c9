"""Input that no database column can hold, refused once for every route (installed on the map, router.py).

PostgreSQL's text types cannot contain the NUL character (U+0000): a NUL in a query parameter, a path segment
or a string of a JSON body reached the driver and ended in a 500 ("PostgreSQL text fields cannot contain NUL
(0x00) bytes"), found by the fuzz run (tests/api/test_fuzz.py). SQLite stores it, so refusing it is also what
keeps both databases answering alike. Integers are bounded by their types instead (app/schema_types.py).

Likewise a number JSON cannot carry: Python's json (which FastAPI parses bodies with) accepts the non-standard
literals NaN, Infinity and -Infinity, and turns an out-of-range number (1e400) into infinity. In a free-form JSON
field (a notification's `data`, an event's `data`) that value reached PostgreSQL's `json` type, which refuses it
("Token "NaN" is invalid"): a 500. It is refused (422 `non_finite_number`) wherever it appears in a body.

And text that is not Unicode: JSON's escapes can spell half of a surrogate pair (`"\\ud800"`), which Python's json
returns as a lone surrogate, a string no UTF-8 encoder accepts. In a free-form field it was stored, and echoed back
in a task's result it made every read of that task a 500. It is refused (422 `invalid_text`) wherever it appears.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from app.db import INVALID_TEXT, NON_FINITE_NUMBER, NUL_CHARACTER, unstorable
from app.errors import Unprocessable

NUL = "\x00"

#: Bytes a JSON body must hold for some number in it to parse as non-finite (a double ends near 1.8e308): a
#: NaN/Infinity literal, an exponent of three digits, or a run of 100 digits (under 100 digits with an exponent of
#: at most two, a number stays below 1e199). Only a body that matches is parsed again; a match inside a string
#: costs that parse, nothing more.
_MAY_BE_NON_FINITE = re.compile(rb"NaN|Infinity|[eE][+-]?[0-9]{3}|[0-9]{100}")

#: The JSON escape of a surrogate code point (U+D800..U+DFFF): only a body holding one is parsed again (a valid pair
#: parses to one character and passes).
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class NonFiniteNumber(Unprocessable):
    """A number of the request's JSON body is NaN or infinite."""

    code = NON_FINITE_NUMBER

    def __init__(self) -> None:
        super().__init__(
            "Numbers must be finite: NaN, Infinity and numbers beyond a double's range are refused; found in the body.",
            details={"in": "the body"},
        )


class LoneSurrogate(Unprocessable):
    """A string of the request's JSON body holds half of a surrogate pair: not Unicode text."""

    code = INVALID_TEXT

    def __init__(self) -> None:
        super().__init__(
            "Text must be Unicode: a string of the body holds an unpaired surrogate escape (\\ud800-\\udfff).",
            details={"in": "the body"},
        )


class NulCharacter(Unprocessable):
    """A string of the request contains U+0000."""

    code = NUL_CHARACTER

    def __init__(self, where: str) -> None:
        super().__init__(f"Text may not contain the NUL character (U+0000); found in {where}.", details={"in": where})


async def reject_nul_characters(request: Request) -> None:
    """Refuse (422) a request whose path, query or JSON body carries U+0000 anywhere in its text, or whose JSON
    body carries a non-finite number."""
    if NUL in request.url.path:
        raise NulCharacter("the path")
    if any(NUL in key or NUL in value for key, value in request.query_params.multi_items()):
        raise NulCharacter("the query")
    body = await request.body()  # (already read by FastAPI for the body parameter: cached, no second read)
    # A JSON string can carry NUL only as the escape \u0000 (a raw control character is invalid JSON), a lone
    # surrogate only as an escape, a non-finite number only as a literal or a long number: the body is parsed again
    # only when one of those appears at all.
    if b"\\u0000" in body or _MAY_BE_NON_FINITE.search(body) or _MAY_HOLD_SURROGATE.search(body):
        found = unstorable(_loads(body))
        if found == NUL_CHARACTER:
            raise NulCharacter("the body")
        if found == NON_FINITE_NUMBER:
            raise NonFiniteNumber()
        if found == INVALID_TEXT:
            raise LoneSurrogate()


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None  # not JSON: the body parameter's own validation answers
