"""Fixtures of the integration tests: a local HTTP receiver that a test scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integrations.queues import purge_work_queues
from tests.integrations.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory: start a receiver (scripted answers, or a handler); every one is stopped after the test."""
    made: list[Receiver] = []

    def start(**kwargs: object) -> Receiver:
        server = Receiver(**kwargs).start()  # type: ignore[arg-type]
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def _queues_without_other_modules_leftovers() -> None:
    """Before the module's worker starts: drop messages earlier modules left queued (rate-limited identity and
    notification tasks), which would otherwise sit ahead of this module's deliveries."""
    purge_work_queues()
