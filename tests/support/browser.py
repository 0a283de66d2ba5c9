"""What the browser tests share (tests/browser/conftest.py holds their fixtures): Debian's Chromium and how it is
launched, and `OfflinePage`, a page that can reach only the API under test."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Playwright's default wait for a selector or a navigation, in milliseconds.
PAGE_TIMEOUT_MS = 20_000


@dataclass
class OfflinePage:
    """A page that can reach only `origin`.

    Parameters:
        page: the Playwright page (its context's default timeout is PAGE_TIMEOUT_MS).
        origin: the live API's base URL, the one reachable origin.
        blocked: every request that was about to leave for another host, aborted.
        refused_by_policy: requests the page's Content-Security-Policy stopped inside the browser.
        errors: uncaught page errors and console errors, for failure messages.
    """

    page: Page
    origin: str
    blocked: list[str] = field(default_factory=list)
    refused_by_policy: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def is_local(self, url: str) -> bool:
        """True for the API's own origin and for in-page URLs (data:, blob:) that need no network."""
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == self.origin
