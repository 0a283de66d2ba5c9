"""Every console page answers for an admin and a viewer, with the right controls, against the real services;
the replay form's JSON check on the server. No browser: the browser flows are in tests/browser/test_console.py."""

from __future__ import annotations

from typing import Any

import pytest

from app.audit import service as audit_service
from app.db import session_scope
from app.deadletters import service as store
from tests.support.api import make_key
from tests.support.console import arrival, csrf_of, sign_in
from tests.support.session import join


@pytest.fixture
def letter_id() -> int:
    """A pending dead letter of the probe task."""
    with session_scope() as session:
        letter = store.record(session=session, arrival=arrival(error="PermanentError: boom"))
        assert letter is not None
        return letter.id


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_every_page_opens_and_only_an_admin_sees_actions(api: Any, letter_id: int, role: str) -> None:
    assert sign_in(api, make_key(role)).status_code == 303
    with session_scope() as session:
        task_id = store.get(session=session, letter_id=letter_id).task_id
    pages = {
        "/console/": "Overview",
        "/console/overview/live": "Queues",
        "/console/dead-letters": "Groups",
        f"/console/dead-letters/{letter_id}": "PermanentError: boom",
        "/console/dead-letters/bulk/replay?task_name=system.ping": "Dry run",
        "/console/dead-letters/bulk/purge?task_name=system.ping": "Dry run",
        "/console/runs": "Runs",
        f"/console/runs/{task_id}": task_id,
        "/console/queues": "Queues",
        "/console/audit": "Audit trail",
        "/console/audit/verification": "Chain",
    }
    for path, text in pages.items():
        page = api.get(path, follow_redirects=False)
        assert page.status_code == 200, (path, page.text[:500])
        assert text in page.text, path
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        has_action = 'method="post" action="/console/dead-letters' in page.text or "/pause" in page.text
        if role == "viewer":
            assert not has_action, path
    series = api.get("/console/overview/series.json").json()
    assert len(series["t"]) == 60 and set(series) == {"t", "accepted", "finished", "failed", "in_flight"}


def test_the_chain_walk_is_shared_by_verification_pages_asked_for_soon_after_it(api: Any) -> None:
    # Given a viewer (any viewer may load the audit page, and each load asks for the chain's verification, a walk of
    # every entry: about 3 s of CPU per 100,000 of them)
    assert sign_in(api, make_key("viewer")).status_code == 303
    shown = api.get("/console/audit/verification").text
    assert "Chain verified" in shown and "walked at" in shown
    for _ in range(2):
        # When an entry is appended and the page is loaded again at once
        with session_scope() as session:
            audit_service.record(session=session, actor="test", action="test.append", target=None)
        again = api.get("/console/audit/verification").text
        # Then it shows the walk made a moment ago, instead of walking the whole chain again
        if again == shown:
            break
        shown = again  # (the first page showed an earlier test's walk, which has just aged out: this one is new)
    else:
        pytest.fail("every load of the verification walked the whole chain again")


def test_replay_refuses_kwargs_that_are_not_a_json_object_and_sends_nothing(api: Any, letter_id: int) -> None:
    assert sign_in(api, make_key("admin")).status_code == 303
    token = csrf_of(api)
    # (and values no record can hold: replayed, a {"sleep_s": Infinity} wedged the recorder on its next death and a
    # {"echo": "\\ud800"} made every read of the task a 500)
    unrecordable = "can be recorded"
    for text, message in (
        ("{oops", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"sleep_s": Infinity}', unrecordable),
        ('{"sleep_s": 1e400}', unrecordable),
        ('{"n": [NaN]}', unrecordable),
        ('{"echo": "\\ud800"}', unrecordable),
        ('{"echo": "a\\u0000b"}', unrecordable),
    ):
        answer = api.post(
            f"/console/dead-letters/{letter_id}/replay", data={"csrf_token": token, "why": "w", "kwargs": text}
        )
        assert answer.status_code == 422 and message in answer.text
    with session_scope() as session:
        assert store.get(session=session, letter_id=letter_id).status == "pending"


def test_a_bulk_replay_at_a_rate_out_of_range_is_refused_with_a_message_and_replays_nothing(
    api: Any, letter_id: int
) -> None:
    # Given an admin's session and a pending letter of the probe task
    assert sign_in(api, make_key("admin")).status_code == 303
    token = csrf_of(api)
    for rate in ("-5", "0", "0.05", "100.5", "1e9", "nan", "inf", "fast"):
        # When the admin starts a bulk replay of its task at that rate
        answer = api.post(
            "/console/dead-letters/bulk/replay",
            data={"csrf_token": token, "why": "w", "task_name": "system.ping", "rate_per_s": rate},
            follow_redirects=False,
        )
        # Then the form is refused with the range, rather than run at a rate the admin did not type
        assert answer.status_code == 422, (rate, answer.text[:500])
        assert "The rate must be a number from 0.1 to 100 letters per second." in answer.text, rate
    with session_scope() as session:
        assert store.get(session=session, letter_id=letter_id).status == "pending"


def test_discard_needs_a_reason_and_records_it(api: Any, letter_id: int) -> None:
    admin = make_key("admin")
    assert sign_in(api, admin).status_code == 303
    token = csrf_of(api)
    assert api.post(f"/console/dead-letters/{letter_id}/discard", data={"csrf_token": token}).status_code == 422
    answer = api.post(
        f"/console/dead-letters/{letter_id}/discard",
        data={"csrf_token": token, "why": "duplicate of #1"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    with session_scope() as session:
        letter = store.get(session=session, letter_id=letter_id)
        assert (letter.status, letter.resolved_by, letter.resolution_note) == ("discarded", admin[0], "duplicate of #1")


def test_the_runs_list_pages_by_keyset_without_losing_or_repeating_a_run(api: Any) -> None:
    import re
    import uuid
    from datetime import timedelta
    from html import unescape

    from app.db import utcnow
    from app.runs.models import TaskRun

    # Given 57 runs of one caller, five of them created at the same instant (ties are ordered by task id)
    caller = f"pager-{uuid.uuid4().hex[:6]}"
    now = utcnow()
    with session_scope() as session:
        for i in range(57):
            created = now - timedelta(seconds=min(i, 52))
            session.add(
                TaskRun(
                    task_id=f"{caller}-{i:02d}",
                    name="system.ping",
                    state="SUCCESS",
                    triggered_by=caller,
                    created_at=created,
                    updated_at=created,
                )
            )
    assert sign_in(api, make_key("viewer")).status_code == 303
    # When the list is read page by page through its Older link
    seen: list[str] = []
    page = api.get("/console/runs", params={"triggered_by": caller})
    while True:
        assert page.status_code == 200
        seen += re.findall(rf"<code>({caller}-\d\d)</code>", page.text)
        older = re.search(r'<a href="\?([^"]+)" rel="next">', page.text)
        if older is None:
            break
        page = api.get("/console/runs?" + unescape(older.group(1)))
    # Then every run shows once, newest first, and the second page says where it is
    assert len(seen) == 57 and len(set(seen)) == 57
    assert seen[:3] == [f"{caller}-00", f"{caller}-01", f"{caller}-02"]
    assert "51–57 of 57" in page.text


@pytest.mark.parametrize("figure", ["finished", "failed"])
def test_each_rate_tile_of_the_overview_opens_the_runs_it_counted(api: Any, figure: str) -> None:
    import re
    import uuid
    from datetime import timedelta
    from html import unescape

    from app.db import utcnow
    from app.runs.models import TaskRun

    # Given recent runs in every finished state and one still running, and runs that ended before the window
    tag = f"tile-{uuid.uuid4().hex[:6]}"
    now = utcnow()
    with session_scope() as session:
        for i, (state, age_s) in enumerate(
            [("SUCCESS", 5), ("SUCCESS", 30), ("FAILURE", 40), ("FAILURE", 60), ("DEAD_LETTERED", 90), ("STARTED", 10)]
            + [("SUCCESS", 900), ("FAILURE", 900), ("DEAD_LETTERED", 900)]
        ):
            created = now - timedelta(seconds=age_s)
            session.add(
                TaskRun(
                    task_id=f"{tag}-{i}",
                    name="system.ping",
                    state=state,
                    triggered_by=tag,
                    created_at=created,
                    updated_at=created,
                )
            )
    assert sign_in(api, make_key("viewer")).status_code == 303
    # When the viewer follows the tile's link from the overview
    overview = api.get("/console/")
    tile = re.search(
        rf'<a class="tile[^"]*" href="([^"]+)"><span class="big">([\d.]+)</span> {figure} / min '
        r"<small>\(last (\d+) min\)</small>",
        overview.text,
    )
    assert tile is not None, overview.text
    href, per_minute, minutes = unescape(tile.group(1)), float(tile.group(2)), int(tile.group(3))
    runs = api.get(href)
    # Then the list holds exactly the runs the tile counted
    assert runs.status_code == 200
    total = re.search(r"<h2>(\d+) runs?</h2>", runs.text)
    assert total is not None, runs.text
    assert round(per_minute * minutes) == int(total.group(1)) > 0


def test_an_admin_revokes_a_waiting_run_with_a_reason_and_the_audit_trail_says_who_and_why(api: Any) -> None:
    import uuid

    from app.audit import service as audit_service
    from app.runs import service as runs_service
    from app.runs.models import TaskRun

    # Given a run that has not started
    task_id = f"waiting-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        session.add(TaskRun(task_id=task_id, name="system.ping", state="PENDING"))
    admin = make_key("admin")
    assert sign_in(api, admin).status_code == 303
    page = api.get(f"/console/runs/{task_id}")
    assert page.status_code == 200 and "/revoke" in page.text
    # When the admin revokes it from its page, with a reason
    answer = api.post(
        f"/console/runs/{task_id}/revoke",
        data={"csrf_token": csrf_of(api), "why": "sent twice by mistake"},
        follow_redirects=False,
    )
    # Then it is revoked for good, and the audit trail has who and why
    assert answer.status_code == 303
    with session_scope() as session:
        run = runs_service.get(session=session, task_id=task_id)
        assert run is not None and run.state == "REVOKED"
        entries = audit_service.list_for_target(session=session, target=f"task:{task_id}")
        assert [(e.action, e.actor, e.reason) for e in entries] == [("task.revoke", admin[0], "sent twice by mistake")]


def test_a_purge_by_filter_and_a_queue_purge_say_how_many_they_dropped(api: Any) -> None:
    import re
    import uuid

    # Given two pending letters of a task of their own, and an admin's session
    task_name = f"purge.{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        for _ in range(2):
            assert store.record(session=session, arrival=arrival(error="boom", task_name=task_name)) is not None
    assert sign_in(api, make_key("admin")).status_code == 303
    token = csrf_of(api)
    # When the admin purges them by filter, and then purges the empty `low` queue through its confirm step
    letters = api.post(
        "/console/dead-letters/bulk/purge", data={"csrf_token": token, "task_name": task_name, "why": "noise"}
    )
    confirm = api.post("/console/queues/low/purge", data={"csrf_token": token, "reason": "drain"})
    assert confirm.status_code == 200
    confirm_token = re.search(r'name="confirm_token" value="([^"]+)"', confirm.text)
    count = re.search(r'<strong id="purge-count">(\d+)</strong>', confirm.text)
    assert confirm_token is not None and count is not None
    # (what `low` holds depends on the tests before: with no worker on it, their dispatches wait there)
    messages = int(count.group(1))
    queue = api.post(
        "/console/queues/low/purge",
        data={"csrf_token": token, "reason": "drain", "confirm_token": confirm_token.group(1)},
    )
    # Then each page they land on says what was dropped, and a forged count names no queue
    assert letters.status_code == 200 and "Discarded 2 dead letters." in letters.text
    said = f"Purged {messages} ready message{'' if messages == 1 else 's'} of low."
    assert queue.status_code == 200 and said in queue.text
    assert 'class="flash"' not in api.get("/console/queues?purged=5&queue=<b>x</b>").text


def test_every_labelled_section_of_every_page_is_named_by_a_heading_of_its_own(api: Any, letter_id: int) -> None:
    import re

    # Given an admin's session
    assert sign_in(api, make_key("admin")).status_code == 303
    for path in ("/console/", "/console/dead-letters", f"/console/dead-letters/{letter_id}", "/console/queues"):
        # When a page is read
        page = api.get(path).text
        # Then each aria-labelledby names a heading on it, never the section itself (a landmark named by its text)
        for labelled_by in re.findall(r'aria-labelledby="([^"]+)"', page):
            assert re.search(rf'<h[1-6][^>]* id="{labelled_by}"', page), (path, labelled_by)


def test_revoking_a_running_run_without_terminate_says_it_runs_on_and_leaves_it_running(api: Any) -> None:
    import uuid

    from app.runs.models import TaskRun

    # Given a run the history shows running, and an admin on its page
    task_id = f"running-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        session.add(TaskRun(task_id=task_id, name="system.ping", state="STARTED"))
    assert sign_in(api, make_key("admin")).status_code == 303
    # When the admin revokes it without ticking terminate
    page = api.post(f"/console/runs/{task_id}/revoke", data={"csrf_token": csrf_of(api), "why": "not needed"})
    # Then the page says the revocation is recorded but the task runs to its end, and the run is still running
    assert page.status_code == 200 and str(page.url).endswith(f"/console/runs/{task_id}?revoked=running")
    assert "Revocation recorded." in page.text and "runs to its end" in page.text
    with session_scope() as session:
        assert session.get(TaskRun, task_id).state == "STARTED"


def test_a_tier_no_worker_consumes_is_marked_so_on_the_queues_page_and_the_overview(api: Any) -> None:
    import re

    from app.constants import Tier

    # Given no worker in this module, and an admin's session
    assert sign_in(api, make_key("admin")).status_code == 303

    def consumers_shown() -> list[int]:
        page = api.get("/console/queues").text
        return [int(re.search(rf'id="queue-{t.value}".*?data-consumers>(\d+)<', page, re.S).group(1)) for t in Tier]

    # (the page shows the management API's counts, which lag by its stats interval: a worker an earlier module
    # stopped is counted for a few seconds more)
    join(lambda: consumers_shown() == [0] * len(Tier), what="the queues page to show no consumer on any tier")
    for path in ("/console/queues", "/console/overview/live"):
        # When the page with the queue table is read
        page = api.get(path).text
        # Then every tier's state says no worker consumes it; none claims it is being consumed
        for tier in Tier:
            row = re.search(rf'<tr[^>]*data-queue="{tier.value}".*?</tr>', page, re.S)
            assert row is not None, (path, tier)
            assert 'data-state="unconsumed"' in row.group(0) and "consuming" not in row.group(0), (path, row.group(0))


def test_a_console_page_that_meets_redis_down_is_a_page_saying_so_not_the_apis_json(api_process: Any) -> None:
    import httpx

    from tests.support.processes import free_port

    # Given an API process whose Redis does not answer, and an admin signed in to its console
    dead = f"redis://127.0.0.1:{free_port()}/0"
    process = api_process({"CELERY_RESULT_BACKEND": dead, "REDIS_URL": dead})
    with httpx.Client(base_url=process.base, timeout=30) as browser:
        assert sign_in(browser, make_key("admin")).status_code == 303
        # When the admin opens the console's pages, and one of its live fragments
        for path in ("/console/", "/console/dead-letters", "/console/runs", "/console/overview/live"):
            page = browser.get(path)
            # Then each is an HTML page with the console's look that says Redis is unavailable, to retry later
            assert page.status_code == 503, path
            assert page.headers["content-type"].startswith("text/html"), (path, page.text[:200])
            assert "<h1>Unavailable</h1>" in page.text and "Redis is unavailable" in page.text, path
            assert page.headers["retry-after"] == "5"
        # and the REST API keeps its JSON envelope
        api_answer = browser.get("/api/v1/tasks/task/x", headers={"Authorization": f"Bearer {make_key('admin')[1]}"})
        assert api_answer.status_code == 503 and api_answer.json()["error"]["code"] == "unavailable"


def test_an_unknown_console_path_is_a_not_found_page_and_an_unknown_api_path_stays_json(api: Any) -> None:
    # Given an admin's session
    assert sign_in(api, make_key("admin")).status_code == 303
    # When the admin follows a mistyped console link, and a client a mistyped API path
    page = api.get("/console/dead-leters")
    rest = api.get("/api/v1/tasks/nope")
    # Then the console answers a page of its own, the API its envelope
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in page.text and 'href="/console/"' in page.text
    assert rest.status_code == 404 and rest.json()["error"]["code"] == "not_found"


def test_the_queues_page_says_the_broker_is_down_where_the_active_tasks_would_be(api_process: Any) -> None:
    import httpx

    from tests.support.processes import free_port

    # Given an API process whose broker does not answer, and an admin signed in to its console
    process = api_process({"RABBITMQ_PORT": str(free_port()), "CELERY_BROKER_URL": ""})
    with httpx.Client(base_url=process.base, timeout=30) as browser:
        assert sign_in(browser, make_key("admin")).status_code == 303
        # When the queues page loads its active tasks
        fragment = browser.get("/console/queues/active")
    # Then the fragment answers (htmx swaps only a 2xx) and says why there is no list
    assert fragment.status_code == 200
    assert "The message broker is unreachable" in fragment.text and 'role="alert"' in fragment.text


def test_every_form_of_every_page_has_a_name_a_screen_reader_announces(api: Any, letter_id: int) -> None:
    import re
    import uuid

    from app.runs.models import TaskRun

    # Given the sign-in page, then an admin's pages: a pending letter's, a running run's, a bulk and a purge confirm
    pages = {"/console/login": api.get("/console/login").text}
    task_id = f"running-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        session.add(TaskRun(task_id=task_id, name="system.ping", state="STARTED"))
    assert sign_in(api, make_key("admin")).status_code == 303
    for path in (
        "/console/",
        "/console/dead-letters",
        f"/console/dead-letters/{letter_id}",
        "/console/dead-letters/bulk/replay?task_name=system.ping",
        "/console/runs",
        f"/console/runs/{task_id}",
        "/console/queues",
        "/console/audit",
    ):
        pages[path] = api.get(path).text
    confirm = api.post("/console/queues/low/purge", data={"csrf_token": csrf_of(api), "reason": "r"})
    pages["purge confirm"] = confirm.text
    for path, page in pages.items():
        forms = re.findall(r"<form\b[^>]*>", page)
        assert forms, path
        for form in forms:
            # Then each form is named, by a label of its own or by a heading on the page
            named = re.search(r'aria-label="[^"]+"', form)
            labelled_by = re.search(r'aria-labelledby="([^"]+)"', form)
            assert named or (labelled_by and f'id="{labelled_by.group(1)}"' in page), (path, form)


def test_an_anonymous_page_is_sent_to_the_sign_in_form_and_a_refused_change_is_a_403_page(api: Any) -> None:
    # Given no session
    api.cookies.clear()
    # When a console page is asked for
    page = api.get("/console/runs?state=FAILURE", follow_redirects=False)
    # Then the answer sends the browser to the sign-in form, remembering the page
    assert page.status_code == 303
    assert page.headers["location"] == "/console/login?next=/console/runs%3Fstate%3DFAILURE"
    # And a signed-in admin's change without its CSRF token is the console's 403 page, not a redirect
    assert sign_in(api, make_key("admin")).status_code == 303
    refused = api.post("/console/queues/low/pause", data={"reason": "no token"})
    assert refused.status_code == 403 and "<h1>Not allowed</h1>" in refused.text
