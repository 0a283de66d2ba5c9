"""Errors of the access domain."""

from __future__ import annotations

from app.errors import Conflict, NotFound


class DuplicateKeyName(Conflict):
    """A key with this name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"An API key named {name!r} already exists.")


class UnknownKey(NotFound):
    """No key has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No API key is named {name!r}.")
