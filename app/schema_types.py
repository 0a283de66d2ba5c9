"""Constrained types for every integer the API accepts: path ids, `limit`/`offset`, body ids.

One place bounds them, so a value the database cannot hold is a 422 with the JSON error envelope before any
query runs (an unbounded `int` reached the driver and ended in a 500: SQLite's "Python int too large to
convert to SQLite INTEGER", PostgreSQL's "integer out of range"). Each type is `Annotated[int, Field(...)]`,
which FastAPI takes as a path, query or body field alike and pydantic as a model field, and whose bounds the
OpenAPI schema shows (`minimum`, `maximum`).

Examples:
    def read_thing(thing_id: Id) -> ...                       # path: 1..MAX_ID, otherwise 422
    def list_things(limit: Limit = 50, offset: Offset = 0)    # query
    class ThingCreate(BaseModel): owner_id: Id | None = None  # body
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

#: The largest value of an SQL `INTEGER` column on PostgreSQL (4 bytes), the type of every id column in
#: Courier's schema (SQLite's INTEGER holds 8 bytes; the smaller bound holds on both). No row can have a
#: larger id, and no larger value can be stored in an id column (a body's `owner_user_id`).
MAX_ID = 2**31 - 1

#: Rows are numbered by int4 ids, so no table holds more than this: a larger offset could only skip
#: everything, and an offset past 2**63 - 1 is an error on both databases.
MAX_OFFSET = MAX_ID

#: The most rows one page may ask for.
MAX_PAGE = 500

#: A row id (path parameter or body field): 1..MAX_ID.
Id = Annotated[int, Field(ge=1, le=MAX_ID, description="A row id (1..2147483647).")]

#: Rows to skip in a listing: 0..MAX_OFFSET.
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="Rows to skip (0..2147483647).")]

#: Rows per page: 1..MAX_PAGE.
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Rows per page (1..{MAX_PAGE}).")]
