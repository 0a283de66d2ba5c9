"""Live progress over Server-Sent Events: increasing progress, then the final state; clients see only their own."""

from __future__ import annotations

import contextlib

import httpx

from app.engine import publish
from tests.support.api import auth, read_events
from tests.support.console import sign_in
from tests.support.session import join


def test_a_task_reporting_progress_streams_increasing_progress_and_ends_with_its_final_state(api, worker, client_key):
    # Given a task of this client's that reports four steps of progress, about one second apart
    task_id = publish.dispatch("system.ping", kwargs={"sleep_s": 4.0, "steps": 4}, triggered_by=client_key[0]).task_id
    # When the client follows its events
    events = read_events(api, client_key, task_id)
    # Then progress climbs (never backwards) to 4/4, and the stream ends with SUCCESS
    progress = [e["progress"]["current"] for name, e in events if name == "state" and e.get("progress")]
    assert len(set(progress)) >= 2, events
    assert progress == sorted(progress) and progress[-1] <= 4
    assert all(e["progress"]["total"] == 4 for name, e in events if name == "state" and e.get("progress"))
    states = [e["state"] for name, e in events if name == "state"]
    assert states[-1] == "SUCCESS" and events[-2][1]["result"]["pong"] is True
    assert events[-1] == ("end", {"task_id": task_id, "state": "SUCCESS"})


def test_a_failed_task_is_followed_past_its_failure_to_its_dead_letter(api, worker, client_key):
    # Given a task of this client's that fails for good (no retry)
    task_id = publish.dispatch("system.ping", kwargs={"fail": "permanent"}, triggered_by=client_key[0]).task_id
    # When the client follows its events
    events = read_events(api, client_key, task_id)
    # Then the stream does not end at the worker's FAILURE but once the dead letter is recorded, whose link it gives
    states = [e["state"] for name, e in events if name == "state"]
    assert states[-1] == "DEAD_LETTERED" and events[-2][1]["dead_letter"] is not None, events
    assert events[-1] == ("end", {"task_id": task_id, "state": "DEAD_LETTERED"})


def test_a_client_cannot_follow_another_callers_task(api, worker, client_key, admin_key):
    # Given a task dispatched by an admin
    task_id = publish.dispatch("system.ping", kwargs={}, triggered_by=admin_key[0]).task_id
    # When a client asks for its events, Then it is not found (as with GET /task/{id})
    response = api.get(f"/api/v1/tasks/task/{task_id}/events", headers=auth(client_key))
    assert response.status_code == 404
    assert response.json()["error"]["code"]
    # And the admin can follow it to its end
    assert read_events(api, admin_key, task_id)[-1][0] == "end"


def test_one_key_holds_at_most_its_share_of_streams_open_and_others_still_get_theirs(
    api_process, client_key, admin_key
):
    # Given an API process allowing 3 streams per key, and a task of this client's that runs for a while
    process = api_process({"EVENTS_MAX_STREAMS_PER_KEY": "3"})
    task_id = publish.dispatch("system.ping", kwargs={"sleep_s": 20}, triggered_by=client_key[0]).task_id
    url = f"{process.base}/api/v1/tasks/task/{task_id}/events"
    with httpx.Client(timeout=10) as http, contextlib.ExitStack() as held:
        # When the client opens 3 streams (each polls the database for as long as it is open)
        opened = [held.enter_context(http.stream("GET", url, headers=auth(client_key))) for _ in range(3)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        # Then a fourth is refused with 429 and Retry-After, not opened (a few hundred took every database
        # connection of the API, then PostgreSQL's own, and every request of every caller answered 503)
        refused = http.get(url, headers=auth(client_key))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_requests" and int(refused.headers["Retry-After"]) > 0
        # And another key still follows the same task
        with http.stream("GET", url, headers=auth(admin_key)) as other:
            assert other.status_code == 200
        # And once the client closes one of its streams, it may open another
        opened[0].close()

        def reopened() -> bool:
            with http.stream("GET", url, headers=auth(client_key)) as again:
                return again.status_code == 200

        join(reopened, what="a stream accepted again after one closed")


def test_the_consoles_streams_count_against_the_same_keys_share(api_process, admin_key):
    # Given an API process allowing 2 streams per key, a task that runs for a while, and a console session of a key
    process = api_process({"EVENTS_MAX_STREAMS_PER_KEY": "2", "CONSOLE_COOKIE_SECURE": "false"})
    task_id = publish.dispatch("system.ping", kwargs={"sleep_s": 20}, triggered_by=admin_key[0]).task_id
    with httpx.Client(base_url=process.base, timeout=10) as console, contextlib.ExitStack() as held:
        assert sign_in(console, admin_key).status_code == 303
        # When the key follows the task on two console run pages (each stream polls the database)
        url = f"/console/runs/{task_id}/events"
        opened = [held.enter_context(console.stream("GET", url)) for _ in range(2)]
        assert [r.status_code for r in opened] == [200, 200]
        # Then a third is refused with 429, on the console as on the API: one signed-in viewer cannot exhaust the
        # database's connections either
        assert console.get(url).status_code == 429
        api_stream = httpx.get(
            f"{process.base}/api/v1/tasks/task/{task_id}/events", headers=auth(admin_key), timeout=10
        )
        assert api_stream.status_code == 429
