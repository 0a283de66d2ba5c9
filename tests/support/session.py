"""What every test helper shares: the repository root, this session's id and scratch directory, and `join`.

tests/conftest.py re-exports these names (`from tests.conftest import ROOT, VAR_DIR, join` keeps working); they
live here so that helpers the root conftest itself imports (tests/support/services.py) can use them too.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SESSION = uuid.uuid4().hex[:8]
#: This session's scratch directory (logs, state files); tests/conftest.py removes it at the end.
VAR_DIR = Path(tempfile.mkdtemp(prefix=f"courier-test-{SESSION}-"))


def join(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
