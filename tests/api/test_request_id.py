"""Every response carries a request id: the caller's own when it sends a plain one, a fresh one otherwise."""

from __future__ import annotations

from typing import Any


def test_a_plain_caller_id_is_echoed(api: Any) -> None:
    response = api.get("/api/v1/tasks/health", headers={"X-Request-ID": "req-123.abc"})
    assert response.headers["X-Request-ID"] == "req-123.abc"


def test_a_missing_or_unsafe_id_is_replaced(api: Any) -> None:
    first = api.get("/api/v1/tasks/health").headers["X-Request-ID"]
    second = api.get("/api/v1/tasks/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(first) == 32 and first != second.headers["X-Request-ID"]
    assert " " not in second.headers["X-Request-ID"]


def test_errors_carry_the_id_too(api: Any) -> None:
    response = api.get("/api/v1/tasks/runs", headers={"X-Request-ID": "denied-1"})
    assert response.status_code == 401
    assert response.headers["X-Request-ID"] == "denied-1"
