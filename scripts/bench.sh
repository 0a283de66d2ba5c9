#!/usr/bin/env bash
# Run the benchmark (README, "Performance"): sets up .venv like the test command, then `python -m bench "$@"`.
#   ./scripts/bench.sh                       # default sizes, about 6-9 minutes on 2 cores
#   ./scripts/bench.sh --messages 20000      # the issue's size
set -euo pipefail
# shellcheck source=scripts/start_tasks.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/start_tasks.sh"
cd "$ROOT_DIR"
apply_defaults
mkdir -p "$LOG_DIR"
ensure_venv
if [[ ! -f "$VENV/.courier-installed-dev" || "$ROOT_DIR/pyproject.toml" -nt "$VENV/.courier-installed-dev" ]]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e "${ROOT_DIR}[dev]"
    touch "$VENV/.courier-installed-dev"
fi
exec "$VENV/bin/python" -m bench "$@"
