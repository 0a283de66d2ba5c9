"""Fixtures of the audit tests."""

from __future__ import annotations

import pytest

from tests.support.services import purge_work_queues


@pytest.fixture(scope="module", autouse=True)
def _queues_without_other_modules_leftovers() -> None:
    """Before the module's worker starts: drop messages earlier modules left queued."""
    purge_work_queues()
