"""The console in headless Chromium against the real stack: a uvicorn API process, a worker on every tier, the
recorder, RabbitMQ, Redis and PostgreSQL of the session. The browser can reach the API and nothing else
(`offline_page`), so every page also proves it needs no CDN.

The flows of the console's issue: triage and replay a dead letter with edited kwargs and watch the run succeed
live; bulk-replay a group (dry-run count, then progress to done); pause and resume a tier and see the workers stop
and start consuming; a viewer's pages without actions and its hand-made POST refused; a missing or wrong CSRF token
refused; a `<script>` error shown as text; signing out ends the session.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Playwright, expect

from tests.support.api import auth, make_key
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, OfflinePage
from tests.support.console import arrival
from tests.support.session import join

pytestmark = pytest.mark.usefixtures("worker")

#: Longest wait for something the stack does in the background (a dead letter recorded, a run finished).
STACK_TIMEOUT_S = 60.0


def sign_in(page: Page, base: str, key: tuple[str, str]) -> None:
    """Sign in through the form, as a person does."""
    page.goto(f"{base}/console/login")
    page.get_by_label("API key").fill(key[1])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def dispatch(base: str, key: tuple[str, str], **body: Any) -> str:
    """POST the probe task through the REST API; its task id."""
    answer = httpx.post(f"{base}/api/v1/tasks/ping", json=body, headers=auth(key), timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["task_id"])


def pending_letter(base: str, key: tuple[str, str], task_id: str) -> dict[str, Any]:
    """Wait for the task's pending dead letter (the recorder wrote it); its summary."""

    def found() -> list[dict[str, Any]]:
        page = httpx.get(
            f"{base}/api/v1/tasks/dead-letters", params={"task_id": task_id}, headers=auth(key), timeout=10
        ).json()
        return list(page["items"])

    return join(found, timeout=STACK_TIMEOUT_S, interval=0.3, what=f"the dead letter of {task_id}")[0]


def csrf(page: Page) -> str:
    """The session's CSRF token, as the page carries it for its own forms."""
    return str(page.locator("body").get_attribute("data-csrf"))


def test_an_admin_finds_a_dead_letter_in_its_group_replays_it_with_edited_kwargs_and_sees_the_run_succeed_live(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    admin = make_key("admin")
    # Given a probe task that failed for good, and an admin signed in to the console
    task_id = dispatch(live_api, admin, fail="permanent", tier="medium")
    pending_letter(live_api, admin, task_id)
    sign_in(page, live_api, admin)
    # When the admin opens the dead letters, finds the probe's group and opens it
    page.get_by_role("navigation").get_by_role("link", name="Dead letters").click()
    group = page.locator("tr.group[data-task='system.ping'][data-reason='failed']")
    expect(group).to_be_visible()
    group.get_by_role("link", name="system.ping").click()
    expect(page.get_by_role("heading", name=re.compile("Groups"))).to_be_visible()
    # And filters by the task id, then opens the letter
    page.get_by_label("Task id").fill(task_id)
    page.get_by_role("button", name="Filter").click()
    page.locator("table.letters a").first.click()
    expect(page.get_by_role("heading", name=re.compile(r"Dead letter \d+"))).to_be_visible()
    expect(page.locator("#letter-error")).to_contain_text("was asked to fail")
    # And replays it with its kwargs edited (no failure this time, and a short sleep to watch it run)
    kwargs = page.get_by_label(re.compile("Keyword arguments"))
    edited = {**json.loads(kwargs.input_value()), "fail": "none", "sleep_s": 1.5}
    kwargs.fill(json.dumps(edited))
    page.get_by_label("Reason (recorded in the audit trail)").first.fill("fixed upstream; retry without failing")
    page.get_by_role("button", name="Replay").click()
    # Then the run's page follows it live to SUCCESS (the stream's `end` marks it finished)
    expect(page.get_by_role("heading", name=re.compile("Run"))).to_contain_text(task_id)
    expect(page.locator("#run-state")).to_have_text("SUCCESS", timeout=STACK_TIMEOUT_S * 1000)
    expect(page.locator("#run-live")).to_have_text("(finished)")
    expect(page.locator("#run-result")).to_contain_text('"pong": true')
    # And the audit trail holds the replay, by whom and why
    page.get_by_role("navigation").get_by_role("link", name="Audit trail").click()
    row = page.locator("table.audit tr", has_text="dead_letter.replay").first
    expect(row).to_contain_text(admin[0])
    expect(row).to_contain_text("fixed upstream; retry without failing")
    expect(page.locator("#chain")).to_contain_text("Chain verified")
    assert offline_page.blocked == [] and offline_page.errors == []


def test_invalid_edited_kwargs_are_refused_before_anything_is_sent(offline_page: OfflinePage, live_api: str) -> None:
    page = offline_page.page
    admin = make_key("admin")
    task_id = dispatch(live_api, admin, fail="permanent")
    letter = pending_letter(live_api, admin, task_id)
    sign_in(page, live_api, admin)
    page.goto(f"{live_api}/console/dead-letters/{letter['id']}")
    # When the kwargs are not JSON, the browser says so and sends nothing
    page.get_by_label(re.compile("Keyword arguments")).fill("{not json")
    page.get_by_label("Reason (recorded in the audit trail)").first.fill("try")
    page.get_by_role("button", name="Replay").click()
    expect(page.locator("#kwargs-error")).to_contain_text("not valid JSON")
    # And a hand-made POST of a JSON array is refused by the server too (422), the letter still pending
    answer = page.request.post(
        f"{live_api}/console/dead-letters/{letter['id']}/replay",
        form={"csrf_token": csrf(page), "why": "x", "kwargs": "[1, 2]"},
    )
    assert answer.status == 422 and "must be a JSON object" in answer.text()
    assert pending_letter(live_api, admin, task_id)["status"] == "pending"


def test_bulk_replay_of_a_group_shows_the_dry_run_count_then_progress_to_done(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    admin = make_key("admin")
    # Given a group of exactly three pending letters (what earlier tests left in it is discarded first)
    _empty_group("system.ping", "failed")
    ids = [dispatch(live_api, admin, fail="permanent") for _ in range(3)]
    for task_id in ids:
        pending_letter(live_api, admin, task_id)
    sign_in(page, live_api, admin)
    # When the admin opens the dead letters and asks to replay the group
    page.goto(f"{live_api}/console/dead-letters")
    group = page.locator("tr.group[data-task='system.ping'][data-reason='failed']")
    group.get_by_role("link", name="Replay group…").click()
    # Then the dry run counts them first, and nothing is replayed yet
    expect(page.locator("#matched")).to_have_text("3")
    assert all(pending_letter(live_api, admin, t)["status"] == "pending" for t in ids)
    # When it confirms with a reason
    page.get_by_label("Reason (recorded in the audit trail)").fill("bulk after the fix")
    page.get_by_role("button", name="Replay 3").click()
    # Then the progress page runs to done, 3 of 3
    expect(page.locator("#bulk-state")).to_have_text("done", timeout=STACK_TIMEOUT_S * 1000)
    expect(page.locator("#bulk-progress")).to_contain_text("Replayed 3, skipped 0")
    assert offline_page.blocked == [] and offline_page.errors == []


def _empty_group(task_name: str, reason: str) -> None:
    from app.db import session_scope
    from app.deadletters import service as store
    from app.deadletters.models import Reason

    with session_scope() as session:
        store.purge(
            session=session,
            filters=store.DeadLetterFilter(task_name=task_name, reason=Reason(reason)),
            actor="test",
            reason="a group of the test's own",
        )


def _oldest_ready(page: Page, base: str, queue: str) -> bool:
    page.goto(f"{base}/console/queues")
    return re.fullmatch(r"\d+(\.\d)? s", page.locator(f"#queue-{queue} td").nth(3).inner_text()) is not None


def _consumers(page: Page, base: str, queue: str) -> int:
    page.goto(f"{base}/console/queues")
    return int(page.locator(f"#queue-{queue} [data-consumers]").inner_text())


def test_pausing_and_resuming_a_tier_stops_and_starts_its_workers_consuming(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    admin = make_key("admin")
    sign_in(page, live_api, admin)
    join(lambda: _consumers(page, live_api, "low") >= 1, timeout=STACK_TIMEOUT_S, what="a consumer on low")
    expect(page.locator("#queue-low")).to_contain_text("consuming")
    # When the admin pauses the low tier with a reason
    page.get_by_label("Reason to pause low").fill("maintenance window")
    page.locator("#queue-low").get_by_role("button", name="Pause").click()
    expect(page.locator("#queue-low")).to_contain_text("paused")
    expect(page.locator("#queue-low")).to_contain_text("maintenance window")
    try:
        # Then the workers stop consuming it: no consumer, and a task sent there waits
        join(lambda: _consumers(page, live_api, "low") == 0, timeout=STACK_TIMEOUT_S, what="low without consumers")
        waiting = dispatch(live_api, admin, tier="low")
        page.goto(f"{live_api}/console/runs/{waiting}")
        expect(page.locator("#run-state")).to_have_text("PENDING")
        # And the queues page shows it waiting, with the age of the oldest ready message
        join(lambda: _oldest_ready(page, live_api, "low"), timeout=STACK_TIMEOUT_S, what="low's oldest message age")
    finally:
        # When it resumes the tier
        page.goto(f"{live_api}/console/queues")
        page.get_by_label("Reason to resume low").fill("window over")
        page.locator("#queue-low").get_by_role("button", name="Resume").click()
    # Then they consume it again, and the waiting task runs
    join(lambda: _consumers(page, live_api, "low") >= 1, timeout=STACK_TIMEOUT_S, what="a consumer on low again")
    page.goto(f"{live_api}/console/runs/{waiting}")
    expect(page.locator("#run-state")).to_have_text("SUCCESS", timeout=STACK_TIMEOUT_S * 1000)
    assert offline_page.blocked == [] and offline_page.errors == []


def test_a_viewer_sees_the_same_pages_without_action_controls_and_its_hand_made_post_is_refused(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    admin, viewer = make_key("admin"), make_key("viewer")
    task_id = dispatch(live_api, admin, fail="permanent")
    letter = pending_letter(live_api, admin, task_id)
    # Given a viewer signed in
    sign_in(page, live_api, viewer)
    expect(page.get_by_role("note")).to_contain_text("Read-only")
    # Then every page opens, and none offers an action: the only form that posts is Sign out (filters get)
    for path in (
        "/",
        "/dead-letters",
        f"/dead-letters/{letter['id']}",
        "/runs",
        f"/runs/{task_id}",
        "/queues",
        "/audit",
    ):
        answer = page.goto(f"{live_api}/console{path}")
        assert answer is not None and answer.status == 200, path
        posting = page.locator("form[method='post']")
        assert posting.count() == 1 and posting.get_attribute("action") == "/console/logout", path
        assert page.get_by_role("link", name=re.compile("Replay|Purge")).count() == 0, path
    # And a hand-made POST with the viewer's session and its valid CSRF token is refused, the letter untouched
    answer = page.request.post(
        f"{live_api}/console/dead-letters/{letter['id']}/discard", form={"csrf_token": csrf(page), "why": "x"}
    )
    assert answer.status == 403 and "viewer reads only" in answer.text()
    assert pending_letter(live_api, admin, task_id)["status"] == "pending"
    assert offline_page.blocked == [] and offline_page.errors == []


def test_a_missing_or_wrong_csrf_token_is_refused(offline_page: OfflinePage, live_api: str) -> None:
    page = offline_page.page
    admin = make_key("admin")
    task_id = dispatch(live_api, admin, fail="permanent")
    letter = pending_letter(live_api, admin, task_id)
    sign_in(page, live_api, admin)
    url = f"{live_api}/console/dead-letters/{letter['id']}/discard"
    for form in ({"why": "no token"}, {"why": "wrong token", "csrf_token": "A" * 43}):
        answer = page.request.post(url, form=form)
        assert answer.status == 403 and "security token" in answer.text(), form
    assert pending_letter(live_api, admin, task_id)["status"] == "pending"


def test_a_task_error_that_is_a_script_renders_as_text(offline_page: OfflinePage, live_api: str) -> None:
    from app.db import session_scope
    from app.deadletters import service as store

    page = offline_page.page
    hostile = "<script>window.__courier_pwned = 1</script><img src=x onerror='window.__courier_pwned = 2'>"
    # Given a dead letter whose task error is markup (recorded by the store as the recorder records one)
    with session_scope() as session:
        letter = store.record(session=session, arrival=arrival(error=hostile))
        assert letter is not None
        letter_id = letter.id
    sign_in(page, live_api, make_key("admin"))
    # When its page and the list open
    for path in (f"/dead-letters/{letter_id}", "/dead-letters?reason=failed&status=any"):
        page.goto(f"{live_api}/console{path}")
        # Then the error reads as text, and nothing of it ran or became an element
        expect(page.get_by_text("<script>window.__courier_pwned = 1</script>", exact=False).first).to_be_visible()
        assert page.evaluate("window.__courier_pwned") is None
        assert page.locator("main script, main img").count() == 0
    assert offline_page.blocked == []


def test_signing_out_ends_the_session(offline_page: OfflinePage, live_api: str) -> None:
    page = offline_page.page
    sign_in(page, live_api, make_key("admin"))
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # The pages now send the browser to the sign-in form
    page.goto(f"{live_api}/console/dead-letters")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert "/console/login?next=/console/dead-letters" in page.url
    assert offline_page.blocked == []


def test_the_first_load_of_a_console_page_logs_no_error(playwright_driver: Playwright, live_api: str) -> None:
    # Given a browser of its own, which has never asked this origin for an icon (Chromium remembers a missing
    # one for the rest of its life), and a page that is not routed: while Playwright routes requests Chromium
    # asks for no icon at all, so `offline_page` could not see the /favicon.ico 404 this test is about
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        page = chromium.new_context(service_workers="block").new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        # When it opens the sign-in page, then signs in and lands on the overview
        page.goto(f"{live_api}/console/login")
        page.wait_for_load_state("networkidle")
        sign_in(page, live_api, make_key("viewer"))
        page.wait_for_load_state("networkidle")
    finally:
        chromium.close()
    # Then its console holds no error: the icon is in the page, not a request that fails
    assert errors == []


def test_at_a_phones_width_the_pages_do_not_scroll_sideways_and_a_wide_table_scrolls_inside_itself(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    # Given an admin signed in on a 375 px wide screen
    page.set_viewport_size({"width": 375, "height": 800})
    sign_in(page, live_api, make_key("admin"))
    for path in ("/console/", "/console/dead-letters", "/console/runs", "/console/audit", "/console/queues"):
        # When a page is open
        page.goto(f"{live_api}{path}")
        expect(page.locator("main h1")).to_be_visible()
        # Then the page itself is no wider than the screen (its header and forms stay in view)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)
    # And the queues table, wider than the screen, scrolls inside itself to its actions
    table = page.locator("table:has(#queue-low)")
    assert table.evaluate("t => t.scrollWidth > t.clientWidth")
    page.get_by_label("Reason to pause low").focus()
    expect(page.get_by_label("Reason to pause low")).to_be_in_viewport()


def test_purging_a_queue_through_its_confirm_step_logs_no_error(offline_page: OfflinePage, live_api: str) -> None:
    page = offline_page.page
    # Given an admin on the queues page
    sign_in(page, live_api, make_key("admin"))
    page.goto(f"{live_api}/console/queues")
    # When the admin asks to purge `low` and confirms on the page that shows the count
    page.get_by_label("Reason to purge low").fill("drain")
    page.locator("#queue-low").get_by_role("button", name="Purge…").click()
    expect(page.get_by_role("heading", name="Purge low?")).to_be_visible()
    page.get_by_role("button", name=re.compile(r"^Purge \d+ message")).click()
    # Then the queues page says what was dropped, and no step left an error in the browser's console
    expect(page.get_by_role("status")).to_contain_text("ready message")
    assert offline_page.errors == []


def test_the_overview_says_when_its_figures_stop_refreshing_and_clears_it_when_they_come_back(
    offline_page: OfflinePage, live_api: str
) -> None:
    page = offline_page.page
    # Given an admin on the overview, whose figures refresh every few seconds
    sign_in(page, live_api, make_key("admin"))
    # When the console's server stops answering the refresh (the API down, or the network)
    page.route("**/console/overview/live", lambda route: route.abort("connectionrefused"))
    # Then the page says so above the figures, and from when they are
    stale = page.locator("#figures-stale")
    expect(stale).to_contain_text("did not answer", timeout=15_000)
    expect(stale).to_contain_text("UTC")
    assert stale.get_attribute("role") == "alert"
    # And when the server answers again, the note goes
    page.unroute("**/console/overview/live")
    expect(stale).to_have_count(0, timeout=15_000)
