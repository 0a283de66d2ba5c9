#!/usr/bin/env bash
# Run the benchmark (README, "Performance"): sets up .venv like the test command, then `python -m bench "$@"`.
#   ./scripts/bench.sh                       # default sizes: 12 minutes measured on 2 busy cores (README)
#   ./scripts/bench.sh --messages 20000      # the issue's size
set -euo pipefail
# shellcheck source=scripts/start_tasks.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/start_tasks.sh"
ensure_dev_venv
ensure_local_services
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $EUID -eq 0 ]]; then
    log "Installing wrk (the HTTP load generator) from Debian packages"
    apt-get install -y -q wrk >/dev/null 2>&1 || warn "Could not install wrk; the API is measured with the Python load generator."
fi
exec "$VENV/bin/python" -m bench "$@"
