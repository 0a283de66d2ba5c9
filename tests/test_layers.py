"""The import contracts bite: lint-imports and the cycle check pass on app/ as it is, and fail, naming the import,
on a copy of app/ with one wrong-way import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy(tmp_path: Path) -> Path:
    """app/ and pyproject.toml (its [tool.importlinter] contracts) copied under tmp_path."""
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(root: Path, module: str, line: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    path.write_text(text.replace(marker, marker + "\n" + line + "\n", 1))


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _cycles(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = ROOT / "scripts" / "import_cycles.py"
    return subprocess.run(
        [sys.executable, str(script), "app"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_code_as_it_is_keeps_every_import_contract_and_has_no_import_cycle(tmp_path):
    root = _copy(tmp_path)
    linted = _lint_imports(root)
    assert linted.returncode == 0, linted.stdout[-3000:] + linted.stderr[-3000:]
    assert "BROKEN" not in linted.stdout and "KEPT" in linted.stdout
    cycles = _cycles(root)
    assert cycles.returncode == 0, cycles.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # A domain reaching up into the engine: the layers and the domains' forbidden list both break.
        ("app.notifications.service", "from app.engine import publish", "Domains import no adapter"),
        # A domain importing an adapter's framework directly.
        ("app.operations.service", "import kombu", "Domains import no adapter"),
        # Infrastructure importing a domain: the layers break.
        ("app.db", "import app.audit.service", "Layers"),
        # The audit trail reading another domain (no cycle: only the domains' own order breaks).
        ("app.audit.service", "import app.runs.models", "Domains depend downward"),
        # The event log reaching up into a domain that emits to it.
        ("app.events.service", "from app.access.schemas import Principal", "Domains depend downward"),
        # Two domains on one level that are independent.
        ("app.notifications.service", "import app.runs.service", "Domains depend downward"),
        # A new cycle between two packages that were independent.
        ("app.redis_store", "import app.rabbitmq", "No package imports a sibling"),
    ],
)
def test_a_wrong_way_import_breaks_its_contract(tmp_path, module, line, contract):
    root = _copy(tmp_path)
    _add_import(root, module, line)
    if contract == "No package imports a sibling":
        _add_import(root, "app.rabbitmq", "import app.redis_store")
    linted = _lint_imports(root)
    assert linted.returncode != 0
    broken = [row for row in linted.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), linted.stdout[-3000:]


def test_an_import_cycle_between_modules_fails_the_cycle_check_and_names_it(tmp_path):
    root = _copy(tmp_path)
    _add_import(root, "app.config", "import app.constants")
    _add_import(root, "app.constants", "import app.config")
    found = _cycles(root)
    assert found.returncode == 1
    assert "app.config" in found.stderr and "app.constants" in found.stderr
