"""Courier's API as tests drive it: the in-process client's helpers, and the API as a real process.

- `auth()`, `make_key()`: an API key of a role and its Authorization header;
- `dispatch()`: POST the probe task (system.ping) and return its task id;
- `finished()`, `read_events()`, `letters()`, `one_letter()`, `register()`: what a client reads back (a task's
  state, its event stream, its dead letters) or registers (a webhook endpoint);
- `value()`: one sample of a scraped Prometheus page;
- `ApiProcess`: `uvicorn app.main:app` as a real process on a free port (tests/support/processes.py);
- `import_anyio_now()`: run once before any in-process client (tests/conftest.py does it at configure time).

tests/conftest.py offers `api` (the in-process TestClient), `admin_key`, `client_key` and `api_process`.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import ServiceProcess, free_port
from tests.support.session import VAR_DIR, join

#: What an API process is asked before it counts as listening.
LIVE_PATH = "/api/v1/tasks/health/live"
#: Scraped Prometheus samples, keyed by (sample name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def import_anyio_now() -> None:
    """Resolve anyio's lazily imported names here, in the main thread.

    anyio ships a pytest plugin, so pytest's assertion rewriter imports every anyio module (with or without
    `-p no:anyio`), parsing its source. A module anyio first imports lazily inside the TestClient's thread (a
    FileResponse's `anyio.open_file`) was then parsed there, concurrently with the main thread, and CPython
    3.11.7 failed it twice in CI with "SystemError: AST constructor recursion depth mismatch": a 500 on a report
    download.
    """
    import warnings

    import anyio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when resolved
        for name in dir(anyio):
            if not name.startswith("_"):
                getattr(anyio, name)


def make_key(role: str) -> tuple[str, str]:
    """(name, key) of a fresh API key of `role` ("admin" or "client"), stored in the session's database."""
    from app.access import service
    from app.access.models import Role
    from app.db import session_scope

    name = f"{role}-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        _, plain = service.create(session=session, name=name, role=Role(role))
    return name, plain


def auth(key: tuple[str, str]) -> dict[str, str]:
    """The Authorization header for a (name, key) pair."""
    return {"Authorization": f"Bearer {key[1]}"}


def dispatch(api: Any, key: tuple[str, str], **body: Any) -> str:
    """POST the probe task as `key` and return its task id (asserting the 202)."""
    response = api.post("/api/v1/tasks/ping", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def finished(api: Any, key: tuple[str, str], task_id: str) -> bool:
    """Whether the task reached a final state (success, failure or dead letter)."""
    body = api.get(f"/api/v1/tasks/task/{task_id}", headers=auth(key)).json()
    return body["state"] in ("SUCCESS", "FAILURE", "DEAD_LETTERED")


def read_events(api: Any, key: tuple[str, str], task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (event, data) of the task's event stream, until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    with api.stream("GET", f"/api/v1/tasks/task/{task_id}/events", headers=auth(key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((str(name), json.loads(line.removeprefix("data: "))))
    return events


def run_in_history(
    api: Any, key: tuple[str, str], task_id: str, *, name: str = "system.ping", state: str = "SUCCESS"
) -> dict[str, Any] | None:
    """The run of `task_id` on the history's first page of `name` runs in `state`, or None while it is not there."""
    page = api.get("/api/v1/tasks/runs", params={"name": name, "state": state, "limit": 500}, headers=auth(key)).json()
    return next((r for r in page["items"] if r["task_id"] == task_id), None)


def letters(api: Any, key: tuple[str, str], task_id: str) -> list[dict[str, Any]]:
    """The task's dead letters, as the dead-letter list shows them."""
    page = api.get("/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(key)).json()
    return list(page["items"])


def one_letter(api: Any, key: tuple[str, str], task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for the task's dead letter; assert there is exactly one, and return its full record."""
    found = join(lambda: letters(api, key, task_id), timeout=timeout, what=f"a dead letter for {task_id}")
    assert len(found) == 1, found
    return dict(api.get(f"/api/v1/tasks/dead-letters/{found[0]['id']}", headers=auth(key)).json())


def register(api: Any, key: tuple[str, str], url: str, types: list[str]) -> dict[str, Any]:
    """Register a webhook endpoint for `types` of event at `url`; its record (asserting the 201)."""
    response = api.post("/api/v1/integrations/webhooks", json={"url": url, "event_types": types}, headers=auth(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def value(samples: Samples, metric: str, **labels: str) -> float:
    """The sample `metric` with exactly `labels` (0.0 when absent)."""
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


class ApiProcess(ServiceProcess):
    """`uvicorn app.main:app` on a free loopback port, with the session's environment plus `env`.

    Parameters:
        env: settings of its own (e.g. its Redis), over the session's environment.
        log_path: where its output goes; by default a fresh `api-*.log` in VAR_DIR.
        ready_path: what `wait_listening()` asks for (the liveness route unless told otherwise).
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, *, log_path: Path | None = None, ready_path: str = LIVE_PATH
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **(env or {})},
            log_path=log_path or VAR_DIR / f"api-{uuid.uuid4().hex[:6]}.log",
            ready_url=f"{self.base}{ready_path}",
            what="the API",
        )
