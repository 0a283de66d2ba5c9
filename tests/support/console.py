"""What the console's tests share: a dead-letter arrival as the recorder hands one to the store, with an error of
the test's choosing (markup, for the safe-rendering tests), and the console's sign-in without a browser."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client: Any, key: tuple[str, str], next_url: str = "/console/") -> Any:
    """Open the sign-in form with `client` (a TestClient) and send it with `key`; the answer (not followed)."""
    form = client.get("/console/login")
    token = LOGIN_TOKEN.search(form.text)
    assert token is not None, form.text
    return client.post(
        "/console/login",
        data={"api_key": key[1], "login_token": token.group(1), "next": next_url},
        follow_redirects=False,
    )


def csrf_of(client: Any) -> str:
    """The session's CSRF token, read off the overview's sign-out form."""
    page = client.get("/console/")
    found = CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def arrival(*, error: str, task_name: str = "system.ping", kwargs: dict[str, Any] | None = None) -> Any:
    """A failed task's dead letter (reason `failed`) as app/engine/dead_letters.py decodes one for the store."""
    from app.deadletters.service import Arrival, Failure

    kwargs = {"echo": error} if kwargs is None else kwargs

    task_id = str(uuid.uuid4())
    return Arrival(
        fingerprint=uuid.uuid4().hex + uuid.uuid4().hex,
        task_id=task_id,
        task_name=task_name,
        decoded=([], kwargs),
        amqp_reason=None,
        declared=None,
        known_task=True,
        failure=Failure(
            classes=("app.errors.PermanentError",), text=error, error_class="PermanentError", retryable=False
        ),
        traceback=f"Traceback (most recent call last):\n  {error}",
        queue="medium",
        exchange="courier.tasks",
        routing_key="medium",
        retries=0,
        death_count=1,
        first_death_at=None,
        replays=0,
        content_type="application/json",
        content_encoding="utf-8",
        properties={},
        headers={},
        body=json.dumps([[], kwargs, {}]),
        body_base64=False,
    )
