"""/docs and /redoc render every operation in headless Chromium with the network closed.

Swagger UI and ReDoc come from package.json's npm packages, served by the API itself under /static/vendor;
FastAPI's defaults loaded them from a CDN, which left a white page on a closed network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from tests.support.browser import OfflinePage

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operations(base: str) -> list[dict[str, str]]:
    """Every operation of the live API's schema: method, path and operationId."""
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    return [
        {"method": method.upper(), "path": path, "id": operation["operationId"]}
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_swagger_ui_lists_every_operation_with_the_network_closed(offline_page: OfflinePage, live_api: str) -> None:
    # Given a browser that can reach the API and nothing else, and the operations the schema declares
    expected = operations(live_api)
    assert len(expected) > 10
    page = offline_page.page
    # When /docs is opened
    response = page.goto(f"{live_api}/docs")
    assert response is not None and response.status == 200
    # Then nothing was asked of another host (FastAPI's default page loads Swagger UI from a CDN)
    assert offline_page.blocked == [], f"/docs asked another host for {offline_page.blocked}"
    # And Swagger UI renders one operation block per operation of the schema, POST /api/v1/tasks/ping among them
    ping = page.locator('.opblock-post .opblock-summary-path[data-path="/api/v1/tasks/ping"]')
    ping.wait_for(state="visible")
    rendered = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent,
                                     b.querySelector('.opblock-summary-path').dataset.path])""",
    )
    assert sorted(map(tuple, rendered)) == sorted((op["method"], op["path"]) for op in expected)
    assert offline_page.blocked == [], f"/docs asked another host for {offline_page.blocked}"
    assert offline_page.errors == []


def test_redoc_lists_every_operation_with_the_network_closed(offline_page: OfflinePage, live_api: str) -> None:
    # Given a browser that can reach the API and nothing else, and the operations the schema declares
    expected = operations(live_api)
    page = offline_page.page
    # When /redoc is opened
    response = page.goto(f"{live_api}/redoc")
    assert response is not None and response.status == 200
    # Then nothing was asked of another host (FastAPI's default page loads ReDoc from a CDN, fonts from Google)
    assert offline_page.blocked == [], f"/redoc asked another host for {offline_page.blocked}"
    # And ReDoc renders a section per operation of the schema
    [ping] = [op["id"] for op in expected if (op["method"], op["path"]) == ("POST", "/api/v1/tasks/ping")]
    page.locator(f'[data-section-id="operation/{ping}"]').wait_for(state="attached")
    sections = page.eval_on_selector_all(
        "[data-section-id^='operation/']", "sections => sections.map(s => s.dataset.sectionId)"
    )
    assert sorted(sections) == sorted(f"operation/{op['id']}" for op in expected)
    # And the one thing ReDoc always asks elsewhere (the Redocly logo of its side menu) was refused in the
    # browser by the page's Content-Security-Policy, never sent
    assert offline_page.blocked == [], f"/redoc asked another host for {offline_page.blocked}"
    assert all(url.startswith("https://cdn.redoc.ly/") for url in offline_page.refused_by_policy)


@pytest.fixture
def api_without_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An API built with WEB_ASSETS_DIR pointing at an empty directory (no `npm ci` was run)."""
    from app.main import create_app

    monkeypatch.setenv("WEB_ASSETS_DIR", str(tmp_path / "node_modules"))
    get_settings.cache_clear()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            yield client
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_without_the_packages_the_docs_pages_answer_503_naming_the_install_command(
    api_without_assets: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an API whose front-end packages are not installed, which said so when it started
    started = " ".join(record.getMessage() for record in caplog.get_records("setup"))
    assert "swagger-ui-dist is not installed" in started and "redoc/bundles is not installed" in started
    for path in ("/docs", "/redoc"):
        # When a docs page is asked for
        response = api_without_assets.get(path)
        # Then it answers 503 with a page that names the command, instead of a page that stays blank
        assert response.status_code == 503, path
        assert response.headers["content-type"].startswith("text/html")
        assert "npm ci" in response.text and "WEB_ASSETS_DIR" in response.text
    # And an asset answers the usual JSON 404 naming the command, not a 500
    asset = api_without_assets.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert asset.status_code == 404
    assert asset.json()["error"]["code"] == "not_found"
    assert "npm ci" in asset.json()["error"]["message"]
    # And the schema is still served
    assert api_without_assets.get("/openapi.json").status_code == 200
