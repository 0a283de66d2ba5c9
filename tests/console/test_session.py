"""Console sign-in, without a browser: which keys may sign in, the session cookie, CSRF, the viewer's refusals,
sign-out, and the viewer role on the REST API. The real app in-process, against the session's real services."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import auth, make_key
from tests.support.console import csrf_of, sign_in


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_an_admin_or_viewer_key_signs_in_with_a_signed_httponly_samesite_cookie_that_expires(
    api: Any, role: str
) -> None:
    # Given a key of the role
    key = make_key(role)
    # When it signs in
    answer = sign_in(api, key)
    # Then it is sent to the overview with a session cookie that scripts cannot read, sent only to /console, same
    # site only, with an expiry, and that does not hold the key
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("courier_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "max-age", "path", "samesite"} <= attributes
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Path=/console" in cookie
    assert key[1] not in cookie
    # And the overview opens, naming the user and the role, and never showing the key
    page = api.get("/console/")
    assert page.status_code == 200
    assert key[0] in page.text and role in page.text
    assert key[1] not in page.text


def test_a_client_key_an_unknown_key_and_a_revoked_key_cannot_sign_in(api: Any) -> None:
    from app.access import service
    from app.db import session_scope

    revoked = make_key("admin")
    with session_scope() as session:
        service.revoke(session=session, name=revoked[0])
    for key in (make_key("client"), ("nobody", "ck_not-a-key"), revoked):
        answer = sign_in(api, key)
        assert answer.status_code == 401, key[0]
        assert "cannot sign in" in answer.text
        assert "courier_console=" not in answer.headers.get("set-cookie", "")
    # And a page without a session sends the browser to the sign-in form
    page = api.get("/console/dead-letters", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login?next=/console/dead-letters")


def test_a_form_without_its_csrf_token_or_with_a_wrong_one_is_refused(api: Any) -> None:
    # Given an admin's session
    assert sign_in(api, make_key("admin")).status_code == 303
    # When a pause is posted without the token, or with another one
    for data in ({"reason": "forged"}, {"reason": "forged", "csrf_token": "x" * 43}):
        answer = api.post("/console/queues/low/pause", data=data, follow_redirects=False)
        # Then it is refused, and nothing was paused
        assert answer.status_code == 403, answer.text
        assert "security token" in answer.text
    from app.db import session_scope
    from app.operations import service as operations

    with session_scope() as session:
        assert "low" not in operations.paused_names(session=session)


def test_a_token_with_non_ascii_characters_is_refused_not_a_server_error(api: Any) -> None:
    # Given a sign-in form, a sign-in whose form token carries a non-ASCII character is refused as expired
    form = api.get("/console/login")
    assert form.status_code == 200
    answer = api.post("/console/login", data={"api_key": "x", "login_token": "\u00e9"}, follow_redirects=False)
    assert answer.status_code == 403, answer.text
    assert "expired" in answer.text
    # And given an admin's session, a form whose CSRF token (field or htmx header) is not ASCII
    assert sign_in(api, make_key("admin")).status_code == 303
    for extra in ({"data": {"reason": "forged", "csrf_token": "\u00e9" * 43}}, {"headers": {"X-CSRF-Token": b"\xe9"}}):
        answer = api.post("/console/queues/low/pause", follow_redirects=False, **extra)
        # Then it is refused like any wrong token (403), never a 500
        assert answer.status_code == 403, answer.text
        assert "security token" in answer.text


def test_a_viewer_sees_the_pages_without_actions_and_its_hand_made_post_is_refused(api: Any) -> None:
    # Given a viewer's session and its valid CSRF token
    viewer = make_key("viewer")
    assert sign_in(api, viewer).status_code == 303
    token = csrf_of(api)
    # When it opens the queues page
    page = api.get("/console/queues")
    # Then it reads it, without a form that changes anything (sign-out is its only form)
    assert page.status_code == 200 and "Read-only" in page.text
    assert "/pause" not in page.text and "/purge" not in page.text
    # And a hand-made pause with the right token is refused 403
    answer = api.post("/console/queues/low/pause", data={"reason": "x", "csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 403 and "viewer reads only" in answer.text
    # And the refusal is in the audit trail, by whom
    from app.audit import service as audit_service
    from app.db import session_scope

    with session_scope() as session:
        [entry] = audit_service.list_for_target(session=session, target="/console/queues/low/pause")[-1:]
        assert (entry.actor, entry.outcome, entry.action) == (viewer[0], "denied", "POST /console/queues/low/pause")


def test_signing_out_ends_the_session_even_for_a_copy_of_its_cookie(api: Any) -> None:
    # Given a signed-in admin and a copy of its cookie
    answer = sign_in(api, make_key("admin"))
    copied = answer.cookies["courier_console"]
    token = csrf_of(api)
    # When it signs out
    out = api.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    # Then the console sends it to the sign-in form, and so it does the copied cookie
    assert api.get("/console/", follow_redirects=False).status_code == 303
    api.cookies.set("courier_console", copied, path="/console")
    assert api.get("/console/", follow_redirects=False).status_code == 303


def test_a_tampered_cookie_is_refused(api: Any) -> None:
    answer = sign_in(api, make_key("admin"))
    value = answer.cookies["courier_console"]
    api.cookies.clear()
    api.cookies.set("courier_console", value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1], path="/console")
    assert api.get("/console/", follow_redirects=False).status_code == 303


def test_on_the_rest_api_a_viewer_key_reads_what_an_admin_reads_and_changes_nothing(api: Any) -> None:
    viewer = make_key("viewer")
    # It reads the admin routes
    assert api.get("/api/v1/tasks/dead-letters", headers=auth(viewer)).status_code == 200
    assert api.get("/api/v1/audit/events", headers=auth(viewer)).status_code == 200
    # And every change is refused, on the admin routes and on the client ones
    assert api.post("/api/v1/tasks/ping", json={}, headers=auth(viewer)).status_code == 403
    assert api.post("/api/v1/tasks/queues/low/pause", json={}, headers=auth(viewer)).status_code == 403
    assert api.post("/api/v1/tasks/dead-letters/purge", json={"why": "x"}, headers=auth(viewer)).status_code == 403


def test_a_filtered_page_opened_without_a_session_is_shown_with_its_filters_after_sign_in(api: Any) -> None:
    import re
    from html import unescape

    # Given a link to a filtered list, opened without a session
    wanted = "/console/dead-letters?task_name=billing.charge&reason=failed"
    answer = api.get(wanted, follow_redirects=False)
    assert answer.status_code == 303
    # When the sign-in form it leads to is sent with an admin key
    form = api.get(answer.headers["location"])
    carried = re.search(r'name="next" value="([^"]*)"', form.text)
    assert carried is not None
    signed_in = sign_in(api, make_key("admin"), next_url=unescape(carried.group(1)))
    # Then the browser goes back to the list with its filters, not to the bare list
    assert signed_in.status_code == 303 and signed_in.headers["location"] == wanted


def test_the_sign_in_page_names_a_key_command_that_runs_without_an_activated_venv(api: Any) -> None:
    import os
    import re
    import shlex
    import subprocess
    import uuid
    from html import unescape

    from tests.support.session import ROOT

    # Given the command the sign-in page offers, for a new viewer
    page = api.get("/console/login")
    command = re.search(r"<code>([^<]*create-api-key[^<]*)</code>", page.text)
    assert command is not None, page.text
    args = shlex.split(unescape(command.group(1)).replace("NAME", f"hint-{uuid.uuid4().hex[:6]}"))
    # When it is run as typed from the checkout, in a shell whose PATH holds no venv
    environment = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    # Then it makes a key that signs in
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("ck_") and sign_in(api, (args[args.index("--name") + 1], key)).status_code == 303
