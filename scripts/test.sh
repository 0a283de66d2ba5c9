#!/usr/bin/env bash
# Run Courier's test suite from a fresh clone: sets up .venv (with the test tools), makes sure the local
# RabbitMQ (+ management API), Redis and PostgreSQL answer (starting them when installed), then runs pytest.
# Each test session works in its own RabbitMQ vhost, Redis db and PostgreSQL database, and removes them.
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/api -x    # arguments go to pytest
set -euo pipefail
# The prerequisites are the start script's own functions, so the two commands set up a machine alike.
# shellcheck source=scripts/start_tasks.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/start_tasks.sh"
ensure_dev_venv

ensure_local_services

exec "$VENV/bin/python" -m pytest "$@"
