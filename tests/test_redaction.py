"""No credential in any log line, error message, health detail or API answer: URLs are redacted where messages
are built (app/config.py `redact_url`), and every log line is masked again on its way out (app/logging.py)."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from urllib.parse import quote

import httpx
import pytest

from app.logging import JsonFormatter, RedactingFormatter
from tests.support.api import ApiProcess, auth
from tests.support.processes import OwnRedis, free_port
from tests.support.services import AMQP_HOST, MGMT_AUTH, VHOST
from tests.support.session import VAR_DIR, join

#: A password anyone would recognise in a log, with characters a URL must percent-encode.
PASSWORD = "Leak-Me/9@x:courier"
ENCODED = quote(PASSWORD, safe="")
#: Every form the password could take in a line: as typed, percent-encoded once and twice.
FORMS = (PASSWORD, ENCODED, quote(ENCODED, safe=""), "Leak-Me")


def assert_no_password(text: str, where: str) -> None:
    for form in FORMS:
        assert form not in text, f"the password ({form!r}) appears in {where}:\n{text[:3000]}"


def test_redact_url_masks_the_password_of_every_url_form():
    from app.config import redact_url

    single = f"amqp://courier:{ENCODED}@rabbit-1:5672/courier"
    failover = f"{single};amqp://courier:{ENCODED}@rabbit-2:5672/courier"
    raw_at = "redis://:p@ss@redis:6379/0"  # an unencoded '@' in a password (urllib reads up to the last one)
    decoded = f"vhost 'v;amqp://courier:{PASSWORD}@rabbit-2:5672/v'"  # a password decoded back into text
    inside_a_path = f"GET /policies/{quote(failover, safe='')}: 401"
    assert redact_url(single) == "amqp://courier:***@rabbit-1:5672/courier"
    assert redact_url(failover) == "amqp://courier:***@rabbit-1:5672/courier;amqp://courier:***@rabbit-2:5672/courier"
    assert redact_url(raw_at) == "redis://:***@redis:6379/0"
    assert (
        redact_url("postgresql+psycopg://courier:pw@db:5432/courier")
        == "postgresql+psycopg://courier:***@db:5432/courier"
    )
    assert redact_url(decoded) == "vhost 'v;amqp://courier:***@rabbit-2:5672/v'"
    for text in (single, failover, inside_a_path, decoded, f"connect('{single}') failed"):
        assert_no_password(redact_url(text), repr(text))
    # URLs without a password are left alone
    for text in ("http://127.0.0.1:15672/api", "redis://127.0.0.1:6379/0", "amqp://guest@h:5672/v", "a@b.example"):
        assert redact_url(text) == text


@pytest.mark.parametrize("formatter", [JsonFormatter(), RedactingFormatter("%(message)s")], ids=["json", "text"])
def test_log_lines_mask_urls_in_the_message_its_arguments_and_the_exception(formatter):
    failover = f"amqp://courier:{ENCODED}@rabbit-1:5672/v;amqp://courier:{ENCODED}@rabbit-2:5672/v"
    try:
        raise RuntimeError(f"refused GET /policies/{quote(failover, safe='')}")
    except RuntimeError as exc:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "check failed: %r", (exc,), sys.exc_info())
    assert_no_password(formatter.format(record), "the formatted line")


def test_the_configured_credentials_are_masked_wherever_they_turn_up():
    from app.logging import redact, remember_secrets

    remember_secrets([PASSWORD])
    try:
        # e.g. a library that quotes a password outside any URL
        assert_no_password(redact(f"AUTH failed for password {PASSWORD!r} ({ENCODED})"), "a line quoting it")
    finally:
        from app.config import get_settings

        remember_secrets(get_settings().secrets)


def test_a_worker_refused_by_the_management_api_does_not_log_the_broker_password(start_worker):
    # Given a worker whose broker URL is a failover list (quorum queues, as a list requires) with a (wrong)
    # password, so the management API refuses it
    url = f"amqp://{MGMT_AUTH[0]}:{ENCODED}@{AMQP_HOST}:5672/{VHOST}"
    env = {"CELERY_BROKER_URL": f"{url};{url.replace(':5672/', ':5673/')}", "QUEUE_TYPE": "quorum"}
    worker = start_worker("low", wait=False, env=env)
    # When its topology check fails and it refuses to start
    join(lambda: worker.process.poll() is not None, timeout=60, what="the worker to refuse to start")
    log = worker.log()
    assert "Refusing to start" in log or "management API" in log, log[-3000:]
    # Then the password appears nowhere in its output, in any form
    assert_no_password(log, "the worker's log")


def test_the_management_client_keeps_a_login_in_its_url_out_of_its_errors():
    from app.rabbitmq import ManagementClient, ManagementError

    # Given a management URL that carries a login, on a port where nothing listens
    client = ManagementClient(f"http://{MGMT_AUTH[0]}:{ENCODED}@127.0.0.1:{free_port()}", "x", "y", timeout=2)
    # When a call fails, Then its error names the call but not the password
    with pytest.raises(ManagementError) as failed:
        client.overview()
    assert "GET /overview" in str(failed.value)
    assert_no_password(str(failed.value), "the ManagementError")
    client.close()


def test_an_api_whose_broker_and_result_store_refuse_it_leaks_no_password(admin_key):
    # Given an API whose broker URL and result-store URL carry the password: the broker on a closed port, and a
    # Redis the test owns that requires another password (Courier's own keys stay on the session's Redis)
    with OwnRedis(extra_args=("--requirepass", "the-right-one")) as own:
        env = {
            "CELERY_BROKER_URL": f"amqp://courier:{ENCODED}@127.0.0.1:{free_port()}/{VHOST}",
            "CELERY_RESULT_BACKEND": f"redis://:{ENCODED}@127.0.0.1:{own.port}/0",
            "REDIS_URL": os.environ["CELERY_RESULT_BACKEND"],
        }
        api = ApiProcess(env, log_path=VAR_DIR / "api-redaction.log")
        try:
            api.wait_listening()
            with httpx.Client(base_url=api.base, timeout=30) as client:
                # When a task is dispatched, health and a task's status (from the result store) are read
                answers = [
                    client.post("/api/v1/tasks/ping", json={}, headers=auth(admin_key)),
                    client.get("/api/v1/tasks/health"),
                ]
                try:
                    answers.append(client.get(f"/api/v1/tasks/task/{uuid.uuid4()}", headers=auth(admin_key)))
                except httpx.HTTPError:  # (a result store that refuses the API gives no answer)
                    pass
        finally:
            api.stop()
    # Then the dispatch is refused with 503, and no answer nor any line of the log carries the password
    assert answers[0].status_code == 503
    for answer in answers:
        assert_no_password(answer.text, f"the answer to {answer.request.url.path}")
    assert_no_password(api.log(), "the API's log")


def test_a_failover_broker_url_gives_the_vhost_and_login_of_its_first_url():
    """Read whole, a kombu failover list made the vhost `v;amqp://user:password@...`, and the management API
    paths built from it carried the password (percent-encoded) into errors and logs."""
    from app.config import Settings

    first = f"amqp://courier:{ENCODED}@rabbit-1:5672/courier"
    settings = Settings(
        _env_file=None, celery_broker_url=f"{first};{first.replace('rabbit-1', 'rabbit-2')}", queue_type="quorum"
    )
    assert settings.broker_vhost == "courier"
    assert settings.broker_credentials == ("courier", PASSWORD)
    assert PASSWORD in settings.secrets
