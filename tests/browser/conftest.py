"""Browser tests: Debian's headless Chromium, driven by Playwright, against a real API process, network closed.

- `live_api`: `uvicorn app.main:app` in a subprocess on a free port, with the session's environment (set by
  tests/conftest.py); its base URL.
- `browser`: /usr/bin/chromium (Debian's `chromium`, which ./scripts/test.sh installs) launched headless by
  Playwright; `playwright install` and its downloaded browsers are never used. Playwright gives each launch a
  fresh temporary profile (--user-data-dir), and the flags in tests/support/browser.py keep Chromium's own
  background traffic off.
- `offline_page`: a page in a fresh context where only the API's own origin is reachable: every request to any
  other host is aborted and recorded (`blocked`), so a test can assert that a page needs nothing from the
  internet. What the page's own Content-Security-Policy refused never left the browser; it is listed apart
  (`refused_by_policy`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Playwright, Request, Route, sync_playwright

from tests.support.api import ApiProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, OfflinePage
from tests.support.session import VAR_DIR


@pytest.fixture(scope="session")
def live_api() -> Iterator[str]:
    """A real API process (uvicorn) on a free loopback port; its base URL, e.g. http://127.0.0.1:40123."""
    with ApiProcess(log_path=VAR_DIR / "api-browser.log", ready_path="/openapi.json") as api:
        api.wait_listening()
        yield api.base


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver (no browser of its own), for one test module at a time: while it lives, its sync API
    keeps an asyncio event loop running in the main thread, and every later test calling `asyncio.run()` fails
    with "cannot be called from a running event loop"."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless, with a fresh profile and its background networking off."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test.sh installs Debian's chromium package (apt-get).")
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def offline_page(browser: Browser, live_api: str) -> Iterator[OfflinePage]:
    """A page in a fresh context whose only reachable host is the live API; everything else is aborted."""
    context = browser.new_context(service_workers="block")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    offline = OfflinePage(page=context.new_page(), origin=live_api)

    def close_the_network(route: Route) -> None:
        if offline.is_local(route.request.url):
            route.continue_()
        else:
            offline.blocked.append(route.request.url)
            route.abort("internetdisconnected")

    def refused(request: Request) -> None:
        if request.failure == "csp":
            offline.refused_by_policy.append(request.url)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            offline.errors.append(message.text)

    context.route("**/*", close_the_network)
    context.on("requestfailed", refused)
    offline.page.on("pageerror", lambda error: offline.errors.append(str(error)))
    offline.page.on("console", console)
    try:
        yield offline
    finally:
        context.close()
