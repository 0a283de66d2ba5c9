#!/usr/bin/env bash
# Lint and format check (ruff). Run after scripts/test.sh has created .venv with the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check app alembic/env.py tests
.venv/bin/ruff format --check app alembic/env.py
.venv/bin/mypy app
