"""/docs (Swagger UI) and /redoc (ReDoc), served from the API's own copies of their npm packages.

FastAPI's built-in pages load both from a CDN (and ReDoc's fonts from Google), so on a closed network they are
a white page. These are FastAPI's own "self-hosting JavaScript and CSS for docs" routes, pointed at
`/static/vendor` (app/web_assets.py). When the packages are not installed, the pages answer 503 with the command
that installs them rather than a page that silently stays blank.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from app import web_assets

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
#: Swagger UI's online validator badge would send the spec's URL to validator.swagger.io: off.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
#: The pages may load from this API only: the browser refuses anything else before it leaves (ReDoc's side
#: menu, for one, always asks cdn.redoc.ly for the Redocly logo). The inline script is FastAPI's page set-up.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

router = APIRouter(include_in_schema=False)


def _root_path(request: Request) -> str:
    """The prefix a proxy mounted the API under (as FastAPI's own docs routes apply it)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _not_installed(request: Request, page: str, package: web_assets.VendorPackage) -> HTMLResponse | None:
    """A 503 page naming the install command when `package` is missing, else None (the log at start-up names
    the missing files; the page does not show the server's paths)."""
    if not web_assets.missing(request.app, package):
        return None
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Courier - {page} unavailable</title></head>"
        f"<body><h1>{page} is not installed</h1>"
        f"<p>The API serves {page} itself, from the npm package <code>{package.directory}</code>, which is not "
        "installed on this server.</p>"
        f"<p>Install the front-end packages with <code>{html.escape(web_assets.INSTALL_COMMAND)}</code> in the "
        "repository (package.json), or point <code>WEB_ASSETS_DIR</code> at their node_modules. The API itself "
        f"works; its schema is at <a href='{html.escape(_root_path(request))}/openapi.json'>/openapi.json</a>.</p>"
        "</body></html>"
    )
    return HTMLResponse(body, status_code=503, headers={"Retry-After": "60"})


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over this API's schema."""
    app: FastAPI = request.app
    if (unavailable := _not_installed(request, "Swagger UI", web_assets.SWAGGER_UI)) is not None:
        return unavailable
    root = _root_path(request)
    page = get_swagger_ui_html(
        openapi_url=root + str(app.openapi_url),
        title=f"{app.title} - Swagger UI",
        swagger_js_url=root + web_assets.SWAGGER_UI.url("swagger-ui-bundle.js"),
        swagger_css_url=root + web_assets.SWAGGER_UI.url("swagger-ui.css"),
        swagger_favicon_url=root + web_assets.SWAGGER_UI.url("favicon-32x32.png"),
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page (inline; it loads nothing)."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over this API's schema, without Google Fonts."""
    app: FastAPI = request.app
    if (unavailable := _not_installed(request, "ReDoc", web_assets.REDOC)) is not None:
        return unavailable
    root = _root_path(request)
    page = get_redoc_html(
        openapi_url=root + str(app.openapi_url),
        title=f"{app.title} - ReDoc",
        redoc_js_url=root + web_assets.REDOC.url("redoc.standalone.js"),
        redoc_favicon_url=root + web_assets.SWAGGER_UI.url("favicon-32x32.png"),
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
