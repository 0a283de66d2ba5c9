"""The dead-letter store (app/deadletters/service.py) on its own, against the session's PostgreSQL database."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from tests.support.api import auth
from tests.support.console import arrival


def test_a_letter_whose_arguments_hold_nan_or_infinity_is_stored_and_its_raw_body_kept(
    api: Any, admin_key: tuple[str, str]
) -> None:
    from app.db import session_scope
    from app.deadletters import service as deadletters

    # Given a dead-lettered message whose arguments Python's json read as NaN and infinities (a replay with edited
    # kwargs {"sleep_s": Infinity} made one; PostgreSQL's json type refused it and the recorder retried it forever,
    # every later dead letter stuck behind it)
    kwargs = {"sleep_s": math.inf, "values": [math.nan, -math.inf, 1.5]}
    raw = '[[], {"sleep_s": Infinity, "values": [NaN, -Infinity, 1.5]}, {}]'
    letter = dataclasses.replace(arrival(error="PermanentError: odd numbers", kwargs=kwargs), body=raw)
    # When the store records it
    with session_scope() as session:
        stored = deadletters.record(session=session, arrival=letter)
        assert stored is not None
        letter_id = stored.id
    # Then it is in SQL, its decoded arguments readable as JSON text, its raw body (what a replay sends) unchanged
    read = api.get(f"/api/v1/tasks/dead-letters/{letter_id}", headers=auth(admin_key))
    assert read.status_code == 200, read.text
    body = read.json()
    assert body["kwargs"] == {"sleep_s": "Infinity", "values": ["NaN", "-Infinity", 1.5]}
    json.dumps(body, allow_nan=False)
    with session_scope() as session:
        assert deadletters.get(session=session, letter_id=letter_id).body == raw
