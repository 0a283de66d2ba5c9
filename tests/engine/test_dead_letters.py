"""Reading a dead-lettered message into a letter the store keeps (app/engine/dead_letters.py), whatever its producer
put in it, against the session's PostgreSQL database."""

from __future__ import annotations

import base64
import json
import time
import uuid

from app.db import session_scope
from app.deadletters import service as store
from app.deadletters.models import Reason
from app.engine import dead_letters
from app.engine.celery_app import celery_app


def _incoming(headers: dict, body: bytes = b"[[], {}, {}]") -> dead_letters.Incoming:
    return dead_letters.Incoming(
        body=body, content_type="application/json", content_encoding="utf-8", headers=headers, properties={}
    )


def test_counts_no_integer_column_takes_are_read_as_their_defaults_and_the_letter_is_stored():
    # Given a message whose producer wrote counts that are not counts, or beyond an SQL integer (each made the
    # letter unreadable or refused by PostgreSQL, and the recorder retried it forever)
    headers = {"id": str(uuid.uuid4()), "task": "system.ping", "retries": "many", "courier-replays": 10**12}
    headers["x-death"] = [{"count": 2**40, "queue": "medium", "reason": "rejected"}]
    # When it is read and stored
    arrival = dead_letters.arrival(_incoming(headers), registered=celery_app.tasks, meta={})
    with session_scope() as session:
        letter = store.record(session=session, arrival=arrival)
        assert letter is not None
        # Then its counts are the defaults
        assert (letter.retries, letter.replays, letter.death_count) == (0, 0, 1)


def test_a_message_read_bare_keeps_its_raw_body_and_text_ids_and_is_stored_as_malformed():
    # Given a message whose headers hold what no column takes (the recorder's last resort, when its decoded letter
    # could not be stored)
    body = json.dumps([[], {"a": 1}, {}]).encode() + b"\xff\x00"
    task_id = str(uuid.uuid4())
    incoming = _incoming({"id": task_id, "task": "system.ping", "x-odd": {"deep": float("nan")}}, body)
    # When it is read bare and stored, twice (the broker redelivered it)
    with session_scope() as session:
        first = store.record(session=session, arrival=dead_letters.bare_arrival(incoming))
        again = store.record(session=session, arrival=dead_letters.bare_arrival(incoming))
        # Then it is one malformed letter with its raw body, byte for byte, and its task's id and name
        assert first is not None and again is None
        assert first.reason == Reason.malformed and (first.task_id, first.task_name) == (task_id, "system.ping")
        assert first.body_base64 and base64.b64decode(first.body or "") == body
        assert first.headers == {}


def test_a_body_holding_a_nul_is_kept_as_base64():
    # Given valid UTF-8 holding a NUL, which no SQL text column takes
    body = b'[[], {"a": "\x00"}, {}]'
    # When it is read
    arrival = dead_letters.arrival(
        _incoming({"id": str(uuid.uuid4()), "task": "system.ping"}, body), registered={}, meta={}
    )
    # Then its body is kept byte for byte, as base64
    assert arrival.body_base64 and base64.b64decode(arrival.body) == body


def test_an_error_celery_cannot_rebuild_keeps_its_class_and_a_retryable_one_reads_retryable():
    celery_app.loader.import_default_modules()  # the task modules, as the recorder loads them
    # Given a task's stored failure that Celery's result backend cannot rebuild from its arguments (SQLAlchemy's
    # errors take a statement, parameters and the driver's error): a database outage that outlasted the retries
    stored = {
        "exc_type": "OperationalError",
        "exc_module": "sqlalchemy.exc",
        "exc_message": ["(psycopg.OperationalError) connection refused"],
    }
    result = celery_app.backend.exception_to_python(stored)
    # When it is read for the dead-letter store
    failure = dead_letters.failure(result, celery_app.tasks["notifications.send_sms"])
    # Then it names the error's own class, whose retries the task had
    assert failure is not None
    assert failure.error_class == "OperationalError" and failure.classes[0] == "sqlalchemy.exc.OperationalError"
    assert failure.text.startswith("OperationalError: ") and "connection refused" in failure.text
    assert failure.retryable
    # And an error Celery rebuilds reads as before
    plain = dead_letters.failure(ValueError("bad input"), celery_app.tasks["notifications.send_sms"])
    assert plain is not None and (plain.error_class, plain.text, plain.retryable) == (
        "ValueError",
        "ValueError: bad input",
        False,
    )


def test_a_replay_clears_the_start_counters_of_its_attempts_by_name_without_scanning_redis():
    """A replay found the letter's start counters with a SCAN, which walks every key in Redis (each result, meta and
    counter of the last RESULT_EXPIRES_S): about a second per replay at 70,000 keys in the soak, minutes at a day's
    keys. It deletes them by name now."""
    import threading

    from tests.support.services import redis_client

    # Given a letter of a task that died at its third retry, with a start counter for each of its attempts
    task_id = str(uuid.uuid4())
    headers = {"id": task_id, "task": "system.ping", "retries": 2}
    headers["x-death"] = [
        {"count": 1, "queue": "medium", "reason": "rejected", "exchange": "", "routing-keys": ["medium"]}
    ]
    arrival = dead_letters.arrival(_incoming(headers), registered=celery_app.tasks, meta={})
    with session_scope() as session:
        letter = store.record(session=session, arrival=arrival)
        assert letter is not None
        letter_id = letter.id
    client = redis_client()
    for retries in range(3):
        client.set(f"courier:starts:{task_id}:{retries}", "3", ex=600)
    seen: list[str] = []
    done = f"courier:test-monitor-done:{task_id}"

    def watch() -> None:
        with client.monitor() as monitor:
            for command in monitor.listen():
                if task_id in command["command"]:
                    seen.append(command["command"])
                    if done in command["command"]:
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)  # (MONITOR is on before the replay)

    # When it is replayed
    with session_scope() as session:
        dead_letters.replay(session=session, letter_id=letter_id, actor="admin")
    client.get(done)
    watcher.join(10)

    # Then its counters are gone, and Redis ran no SCAN for them
    assert not client.exists(*(f"courier:starts:{task_id}:{retries}" for retries in range(3)))
    assert not [command for command in seen if command.upper().startswith("SCAN")], seen
