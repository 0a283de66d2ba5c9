#!/usr/bin/env bash
# Run Courier's test suite from a fresh clone: sets up .venv (with test tools), makes sure the local
# RabbitMQ (+ management), Redis and PostgreSQL answer (starting them when installed), then runs pytest.
# Every test session works in its own RabbitMQ vhost, Redis db and PostgreSQL database, and removes them.
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/api -x    # arguments go to pytest
set -euo pipefail
# shellcheck source=scripts/lib/services.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/services.sh"
cd "$COURIER_ROOT"

ensure_venv dev
ensure_rabbitmq "${TEST_RABBITMQ_HOST:-127.0.0.1}" 5672 "${TEST_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
ensure_redis "${TEST_REDIS_HOST:-127.0.0.1}" 6379
ensure_postgres 127.0.0.1 5432

exec .venv/bin/python -m pytest "$@"
