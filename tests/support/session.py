"""What every test helper shares: the repository root, this session's id and scratch directory, and `join`.

Importing it creates the scratch directory and touches no service.
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
#: This session's scratch directory (logs, state files); removed at the end (tests/support/services.py).
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
