#!/usr/bin/env bash
# Run Courier's test suite from a fresh clone: sets up .venv (with the test tools) and the front-end packages,
# installs Debian's Chromium for the browser tests, makes sure the local RabbitMQ (+ management API), Redis and
# PostgreSQL answer (starting them when installed), then runs pytest.
# Each test session works in its own RabbitMQ vhost, Redis db and PostgreSQL database, and removes them.
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/api -x    # arguments go to pytest
set -euo pipefail
# The prerequisites are the start script's own functions, so the two commands set up a machine alike.
# shellcheck source=scripts/start_tasks.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/start_tasks.sh"

#: The browser tests (tests/browser) drive this binary through Playwright; Playwright's own browser download
#: is never used (`playwright install` needs the internet).
readonly CHROMIUM=/usr/bin/chromium

# Debian's chromium package, installed with apt-get when it is missing (as root, or through sudo).
ensure_chromium() {
    [[ -x "$CHROMIUM" ]] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "The browser tests need Chromium at $CHROMIUM (Debian's chromium package); install it and rerun."
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "Installing Chromium needs root: sudo apt-get install -y chromium."
        sudo=(sudo)
    fi
    local apt_log="$LOG_DIR/apt-chromium.log"
    log "Installing Chromium for the browser tests (apt-get install chromium); log: $apt_log"
    if ! { "${sudo[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y chromium; } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install chromium failed (full log: $apt_log)."
    fi
    [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium, but $CHROMIUM is not there."
}

ensure_dev_venv
ensure_chromium

ensure_local_services

exec "$VENV/bin/python" -m pytest "$@"
