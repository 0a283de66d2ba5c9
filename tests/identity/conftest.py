"""Identity tests run against a real SMTP server, a fake HTTP SMS/push provider and a real worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.delivery import Delivery, delivery_stack
from tests.support.workers import RecorderProcess


@pytest.fixture(scope="module")
def stack(recorder: RecorderProcess) -> Iterator[Delivery]:
    yield from delivery_stack("identity")


@pytest.fixture
def delivered(stack: Delivery) -> Delivery:
    stack.inbox.clear()
    stack.provider.clear()
    return stack
