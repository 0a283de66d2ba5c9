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


def test_a_letter_holding_text_no_sql_column_takes_is_stored_escaped_and_cut(
    api: Any, admin_key: tuple[str, str]
) -> None:
    from app.db import session_scope
    from app.deadletters import service as deadletters

    # Given a dead letter from a producer of its own: a NUL and an unpaired surrogate in its error, traceback,
    # arguments and headers, and a task name, queue and content type longer than their columns (PostgreSQL refused
    # each, and the recorder retried the letter forever, every later one behind it)
    odd = "bad\x00byte \ud800"
    letter = dataclasses.replace(
        arrival(error=f"PermanentError: {odd}", task_name="t" * 300, kwargs={odd: [odd]}),
        traceback=f"Traceback:\n  {odd}",
        queue="q" * 300,
        content_type="c" * 300,
        headers={"x-odd": odd},
    )
    # When the store records it
    with session_scope() as session:
        stored = deadletters.record(session=session, arrival=letter)
        assert stored is not None
        letter_id = stored.id
    # Then it is in SQL and readable, the odd text escaped and each value cut to its column
    read = api.get(f"/api/v1/tasks/dead-letters/{letter_id}", headers=auth(admin_key))
    assert read.status_code == 200, read.text
    body = read.json()
    escaped = "bad\\x00byte \\ud800"
    assert body["error"] == f"PermanentError: {escaped}"
    assert body["kwargs"] == {escaped: [escaped]}
    assert body["task_name"] == "t" * 200 and body["queue"] == "q" * 200
    with session_scope() as session:
        stored = deadletters.get(session=session, letter_id=letter_id)
        assert stored.headers == {"x-odd": escaped} and stored.content_type == "c" * 100
        assert "\\x00" in (stored.traceback or "")
