"""Fixtures of the integration tests (the `receiver` factory they use is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.services import purge_work_queues


@pytest.fixture(scope="module", autouse=True)
def _queues_without_other_modules_leftovers() -> None:
    """Before the module's worker starts: drop messages earlier modules left queued (rate-limited identity and
    notification tasks), which would otherwise sit ahead of this module's deliveries."""
    purge_work_queues()
