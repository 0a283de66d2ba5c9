#!/usr/bin/env bash
# Lint and format check (ruff), types (mypy), and the import layering ([tool.importlinter] in pyproject.toml, plus
# no module-level import cycle). Run after scripts/test.sh has created .venv with the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check app alembic/env.py tests scripts/import_cycles.py
.venv/bin/ruff format --check app alembic/env.py scripts/import_cycles.py
.venv/bin/mypy app
.venv/bin/lint-imports --no-cache
.venv/bin/python scripts/import_cycles.py app
