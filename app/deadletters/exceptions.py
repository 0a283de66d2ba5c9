"""Errors of the dead-letter store."""

from __future__ import annotations

from app.errors import Conflict, NotFound, ServiceUnavailable


class DeadLetterNotFound(NotFound):
    """No dead letter has this id."""

    def __init__(self, letter_id: int) -> None:
        super().__init__(f"No dead letter {letter_id} exists.")


class NotReplayable(Conflict):
    """The letter cannot be replayed or discarded in its current state."""

    def __init__(self, letter_id: int, why: str) -> None:
        super().__init__(f"Dead letter {letter_id} cannot be changed: {why}.")


class ReplayNotPublished(ServiceUnavailable):
    """The broker refused or could not route the replay (its queue missing or unbound); the letter stays pending."""

    def __init__(self, letter_id: int, why: str) -> None:
        super().__init__(f"Dead letter {letter_id} was not replayed: {why}. It stays pending.")
