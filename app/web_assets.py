"""Front-end packages the API serves itself, from npm's node_modules, so no page of Courier needs the internet
(/docs and /redoc, and the console's htmx and uPlot).

package.json (with its package-lock.json) at the repository root lists them; `npm ci --ignore-scripts`
installs them into WEB_ASSETS_DIR (scripts/start_tasks.sh does it in a checkout, the Dockerfile in the image),
and `mount()` serves each under `/static/vendor/<name>/`. A page that needs one asks `missing()` first, so a
machine that skipped the install gets an answer naming the command rather than a blank page.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.config import Settings
from app.errors import NotFound

logger = logging.getLogger(__name__)

#: URL prefix under which every vendored package is served.
VENDOR_URL = "/static/vendor"
#: What installs the packages, for messages to whoever finds them missing.
INSTALL_COMMAND = "npm ci --no-audit --no-fund --ignore-scripts (run by ./scripts/start_tasks.sh start)"


@dataclass(frozen=True)
class VendorPackage:
    """One npm package's served directory and the files a page loads from it.

    Parameters:
        name: the URL segment (`/static/vendor/<name>/...`).
        directory: the directory served, relative to WEB_ASSETS_DIR (node_modules).
        files: the files pages load; all must exist for the package to count as installed.
    """

    name: str
    directory: str
    files: tuple[str, ...]

    def url(self, file: str) -> str:
        """The URL path of one of `files`."""
        return f"{VENDOR_URL}/{self.name}/{file}"


SWAGGER_UI = VendorPackage(
    "swagger-ui", "swagger-ui-dist", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
)
REDOC = VendorPackage("redoc", "redoc/bundles", ("redoc.standalone.js",))
#: The console's partial updates (hx-get polling, forms that swap a fragment). The 2.0 line: htmx 4 is a rewrite.
HTMX = VendorPackage("htmx", "htmx.org/dist", ("htmx.min.js",))
#: The console's charts (throughput, failures, backlog): small, canvas-based, no dependencies.
UPLOT = VendorPackage("uplot", "uplot/dist", ("uPlot.iife.min.js", "uPlot.min.css"))
#: Every package the API serves (each one listed in package.json).
PACKAGES = (SWAGGER_UI, REDOC, HTMX, UPLOT)


def missing(app: FastAPI, package: VendorPackage) -> list[Path]:
    """The files of `package` that are not installed where `mount()` serves it from (empty when complete)."""
    root = Path(app.state.web_assets_dir) / package.directory
    return [root / file for file in package.files if not (root / file).is_file()]


def warn_if_missing(app: FastAPI) -> None:
    """Log, once at start-up, each package the pages need that is not installed."""
    for package in PACKAGES:
        if absent := missing(app, package):
            logger.warning(
                "The front-end package %s is not installed (%s missing): pages that use it answer 503 until "
                "it is; run %s.",
                package.directory,
                ", ".join(str(path) for path in absent),
                INSTALL_COMMAND,
            )


class _InstalledFiles(StaticFiles):
    """StaticFiles over a directory that may not be installed yet: until it is, every file answers a JSON 404
    naming the install command (Starlette's own check would raise, a 500), and it is checked again each time."""

    def __init__(self, package: VendorPackage, directory: Path) -> None:
        super().__init__(directory=directory, check_dir=False)
        self.package = package

    async def check_config(self) -> None:
        if not os.path.isdir(str(self.directory)):
            raise NotFound(f"The {self.package.directory} package is not installed; run {INSTALL_COMMAND}.")
        await super().check_config()


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve every package under VENDOR_URL from WEB_ASSETS_DIR; a package not installed answers 404 until it is."""
    app.state.web_assets_dir = settings.web_assets_dir
    for package in PACKAGES:
        app.mount(
            f"{VENDOR_URL}/{package.name}",
            _InstalledFiles(package, settings.web_assets_dir / package.directory),
            name=f"vendor-{package.name}",
        )
