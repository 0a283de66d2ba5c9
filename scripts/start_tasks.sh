#!/usr/bin/env bash
# Courier's operator entry point: bring the whole stack up or down on one machine.
#
#   ./scripts/start_tasks.sh start | stop | restart | status | logs [service] | health
#
# With a working Docker engine it drives `docker compose -f docker-compose.tasks.yml`; without one it runs
# every process natively from .venv, with pid files in $VAR_DIR/run and logs in $VAR_DIR/log.
# COURIER_RUNTIME=native|compose forces one or the other. Settings come from the environment and `.env`
# (the environment wins); .env.example documents every one of them.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT_DIR
readonly COMPOSE_FILE="docker-compose.tasks.yml"
readonly VENV="$ROOT_DIR/.venv"
readonly INSTALL_STAMP="$VENV/.courier-installed"
readonly TIERS=(high medium low)
#: Bounded waits, in seconds.
readonly SERVICE_WAIT_S=60
readonly API_WAIT_S=60
readonly STOP_WAIT_S=20
#: Endpoints as app.config computes them; filled by read_endpoints.
BROKER_HOST="" BROKER_PORT="" REDIS_ENDPOINTS="" DB_KIND="" DB_HOST="" DB_PORT="" DB_ERROR=""
MANAGEMENT_URL="" MANAGEMENT_HOST="" BROKER_API_URL=""
#: On a cluster (RABBITMQ_HOSTS, RABBITMQ_MANAGEMENT_URLS): every node's host:port, management URL and Flower's
#: broker API URL (same order as the management URLs), space-separated. A single node is a list of one.
BROKER_ENDPOINTS="" MANAGEMENT_URLS="" BROKER_API_URLS=""

usage() {
    cat >&2 <<'EOF'
Usage: ./scripts/start_tasks.sh COMMAND

Commands:
  start           provision the broker and the database, then start the API, workers, beat, recorder and Flower
  stop            stop what `start` started (RabbitMQ, Redis and PostgreSQL keep running)
  restart         provision and migrate, then replace every process one service at a time; the API keeps
                  answering (its processes are replaced one by one) unless its settings changed
  status          one line per service; exits 1 when any is down
  logs [service]  follow the last 100 lines of one service's log, or of all of them
  health          broker, result backend, database and workers, plus the HTTP health endpoint; exits 1 when any is down

Environment: COURIER_RUNTIME=native|compose (default: compose when `docker info` succeeds, native otherwise),
and every setting in .env.example (read from .env when present; the environment wins).
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --- Configuration -----------------------------------------------------------------------------------------

# Export every NAME=value of .env that the environment does not already set.
load_env_file() {
    local file="$ROOT_DIR/.env" line name value
    [[ -f "$file" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        name="${BASH_REMATCH[2]}"
        value="${BASH_REMATCH[3]}"
        if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
            value="${BASH_REMATCH[1]}"
        fi
        [[ -v "$name" ]] && continue
        export "$name=$value"
    done <"$file"
}

# Defaults for what this script reads itself; they match .env.example (app/config.py reads the rest).
apply_defaults() {
    : "${API_HOST:=127.0.0.1}" "${API_PORT:=8000}" "${VAR_DIR:=./var}"
    : "${RABBITMQ_MANAGEMENT_URL:=http://127.0.0.1:15672}"
    : "${CELERY_WORKER_CONCURRENCY:=4}" "${CELERY_LOG_LEVEL:=INFO}" "${CELERY_WORKER_NAME:=}"
    : "${WORKER_PER_TIER:=true}" "${DATABASE_URL:=}"
    : "${FLOWER_USER:=admin}" "${FLOWER_PASSWORD:=flower_dev_pass}" "${FLOWER_PORT:=5555}"
    : "${TASK_EVENTS_ENABLED:=false}"
    [[ "$VAR_DIR" == /* ]] || VAR_DIR="$ROOT_DIR/${VAR_DIR#./}"
    RUN_DIR="$VAR_DIR/run"
    LOG_DIR="$VAR_DIR/log"
}

# The address clients use to reach the API (a wildcard bind is reached on loopback).
api_base_url() {
    local host="$API_HOST"
    case "$host" in 0.0.0.0 | "" | "::" | "[::]") host=127.0.0.1 ;; esac
    [[ "$host" == *:* && "$host" != \[* ]] && host="[$host]"
    printf 'http://%s:%s' "$host" "$API_PORT"
}

runtime() {
    case "${COURIER_RUNTIME:-}" in
        native | compose) printf '%s' "$COURIER_RUNTIME" ;;
        "" | auto)
            if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
                printf compose
            else
                printf native
            fi
            ;;
        *) die "COURIER_RUNTIME must be native or compose, not '$COURIER_RUNTIME'." ;;
    esac
}

# --- Compose runtime ---------------------------------------------------------------------------------------

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -f "$ROOT_DIR/$COMPOSE_FILE" "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose -f "$ROOT_DIR/$COMPOSE_FILE" "$@"
    else
        die "COURIER_RUNTIME=compose needs the Docker Compose plugin (docker compose) or docker-compose."
    fi
}

compose_status() {
    local expected running missing=0 service
    compose ps
    expected="$(compose config --services)"
    running="$(compose ps --status running --services)"
    for service in $expected; do
        [[ "$service" == migrate ]] && continue
        if ! grep -qx "$service" <<<"$running"; then
            printf '%-14s stopped\n' "$service"
            missing=1
        fi
    done
    return "$missing"
}

run_compose() {
    local command="$1"
    shift
    docker info >/dev/null 2>&1 || die "COURIER_RUNTIME=compose, but the Docker engine does not answer (docker info)."
    case "$command" in
        start) compose up -d --build --wait ;;
        stop) compose down ;;
        restart) compose down && compose up -d --build --wait ;;
        status) compose_status ;;
        logs) compose logs --tail 100 -f "$@" ;;
        health) compose exec api python -m app.cli health ;;
    esac
}

# --- Native: interpreter and settings ----------------------------------------------------------------------

find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s' "$candidate"
            return 0
        fi
    done
    return 1
}

# Create .venv and install the project when it is missing or pyproject.toml changed since the last install.
ensure_venv() {
    local python
    if [[ ! -x "$VENV/bin/python" ]]; then
        python="$(find_python)" || die "Python 3.11 or newer is required to create .venv (python3 -m venv)."
        log "Creating .venv with $python"
        "$python" -m venv "$VENV"
    fi
    if [[ ! -f "$INSTALL_STAMP" || "$ROOT_DIR/pyproject.toml" -nt "$INSTALL_STAMP" ]]; then
        local pip_log="$LOG_DIR/pip-install.log"
        log "Installing Courier into .venv (pip install -e .); log: $pip_log"
        if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT_DIR" >"$pip_log" 2>&1; then
            tail -n 30 "$pip_log" >&2
            die "pip install -e . failed (full log: $pip_log)."
        fi
        touch "$INSTALL_STAMP"
    fi
    ensure_web_assets
}

# The front-end packages the API serves itself (/docs, /redoc, the console's htmx and uPlot): package-lock.json installed into node_modules/
# by `npm ci`, again whenever the lock file changes. Nothing runs their install scripts.
ensure_web_assets() {
    local stamp="$ROOT_DIR/node_modules/.courier-installed" npm_log="$LOG_DIR/npm-ci.log"
    [[ -f "$stamp" && ! "$ROOT_DIR/package-lock.json" -nt "$stamp" ]] && return 0
    command -v npm >/dev/null 2>&1 ||
        die "npm is required to install the front-end packages of package.json (Swagger UI and ReDoc for the API docs," \
            "htmx and uPlot for the console): install Node.js 18+ with npm (e.g. apt-get install nodejs npm), then rerun."
    log "Installing the front-end packages (npm ci); log: $npm_log"
    if ! (cd "$ROOT_DIR" && npm ci --no-audit --no-fund --ignore-scripts) >"$npm_log" 2>&1; then
        tail -n 30 "$npm_log" >&2
        die "npm ci failed (full log: $npm_log)."
    fi
    touch "$stamp"
}

# .venv plus the development tools (tests, lint, the benchmark's peers): used by test.sh and bench.sh.
ensure_dev_venv() {
    local stamp="$VENV/.courier-installed-dev"
    cd "$ROOT_DIR"
    apply_defaults
    mkdir -p "$LOG_DIR"
    ensure_venv
    if [[ ! -f "$stamp" || "$ROOT_DIR/pyproject.toml" -nt "$stamp" ]]; then
        log "Installing the development tools into .venv (pip install -e .[dev])"
        "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e "${ROOT_DIR}[dev]"
        touch "$stamp"
    fi
}

# Endpoints as Courier computes them (URLs built from parts, REDIS_PASSWORD applied), one NAME=value a line.
read_endpoints() {
    local name value
    while IFS='=' read -r name value; do
        case "$name" in
            BROKER_HOST | BROKER_PORT | REDIS_ENDPOINTS | DB_KIND | DB_HOST | DB_PORT | MANAGEMENT_URL | MANAGEMENT_HOST | \
                BROKER_API_URL | BROKER_ENDPOINTS | MANAGEMENT_URLS | BROKER_API_URLS | DB_ERROR)
                printf -v "$name" '%s' "$value"
                ;;
        esac
    done < <("$VENV/bin/python" - <<'PY'
from urllib.parse import quote, urlsplit

from app.config import get_settings

s = get_settings()
def endpoint(url):
    part = urlsplit(url)
    return part.hostname or "127.0.0.1", part.port or (5671 if part.scheme == "amqps" else 5672)

brokers = [endpoint(url) for url in s.broker_urls]
print(f"BROKER_HOST={brokers[0][0]}")
print(f"BROKER_PORT={brokers[0][1]}")
print(f"BROKER_ENDPOINTS={' '.join(f'{host}:{port}' for host, port in brokers)}")
redis = []
for url in dict.fromkeys([s.result_backend_dsn, s.redis_dsn]):
    part = urlsplit(url)
    if part.scheme.startswith("redis"):
        redis.append(f"{part.hostname or '127.0.0.1'}:{part.port or 6379}")
print(f"REDIS_ENDPOINTS={' '.join(dict.fromkeys(redis))}")
db = urlsplit(s.sqlalchemy_url)
try:  # a misspelled scheme (postgressql://) is one sentence here, not a traceback from the migration
    from sqlalchemy.engine import make_url

    make_url(s.sqlalchemy_url).get_dialect()
except Exception as exc:
    print(
        f"DB_ERROR=DATABASE_URL starts with {db.scheme or '(nothing)'}://, which names no database Courier can use "
        f"({type(exc).__name__}); write postgresql://USER@HOST:5432/NAME, or leave it empty for SQLite in var/."
    )
print(f"DB_KIND={db.scheme.split('+')[0]}")
print(f"DB_HOST={db.hostname or ''}")
print(f"DB_PORT={db.port or 5432}")
user, password = s.broker_credentials
login = f"{quote(user, safe='')}:{quote(password, safe='')}"
mgmts = [urlsplit(url) for url in s.management_urls]
print(f"MANAGEMENT_URL={s.management_urls[0]}")
print(f"MANAGEMENT_HOST={mgmts[0].hostname or ''}")
print(f"MANAGEMENT_URLS={' '.join(s.management_urls)}")
api_urls = [f"{m.scheme}://{login}@{m.netloc.rpartition('@')[2]}/api/" for m in mgmts]
print(f"BROKER_API_URL={api_urls[0]}")
print(f"BROKER_API_URLS={' '.join(api_urls)}")
PY
    )
    [[ -n "${BROKER_HOST:-}" ]] || die "Could not read Courier's settings (python -c 'from app.config import get_settings')."
    [[ -z "${DB_ERROR:-}" ]] || die "$DB_ERROR"
}

# --- Native: prerequisites ---------------------------------------------------------------------------------

port_open() {
    local host="$1" port="$2"
    # shellcheck disable=SC2016  # $0 and $1 belong to the inner shell
    timeout 2 bash -c ': >"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

is_local_host() {
    case "$1" in 127.0.0.1 | localhost | ::1 | "") return 0 ;; *) return 1 ;; esac
}

wait_for_port() {
    local what="$1" host="$2" port="$3" started=$SECONDS
    until port_open "$host" "$port"; do
        ((SECONDS - started >= SERVICE_WAIT_S)) && return 1
        sleep 1
    done
    ((SECONDS == started)) || log "$what answers on $host:$port after $((SECONDS - started))s"
}

start_rabbitmq() { rabbitmq-server -detached; }

# The Redis `start` starts when none answers: the append-only file on, fsync'd every second, in $VAR_DIR/redis,
# so the task metas, results and history entries of accepted tasks survive a restart (README, "Redis durability").
start_redis() {
    local port="${2:-6379}"
    mkdir -p "$VAR_DIR/redis" "$LOG_DIR"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --appendonly yes --appendfsync everysec \
        --save "" --dir "$VAR_DIR/redis" --logfile "$LOG_DIR/redis.log"
}

# The machine-wide Redis the tests and the benchmark use (test.sh): they own their data, none of it durable.
start_test_redis() {
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_postgres() {
    # shellcheck disable=SC2046  # one cluster version directory on a developer machine
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
}

# ensure_service NAME HOST PORT SERVER_BINARY START_FUNCTION
ensure_service() {
    local what="$1" host="$2" port="$3" binary="$4" starter="$5"
    port_open "$host" "$port" && return 0
    if is_local_host "$host" && command -v "$binary" >/dev/null 2>&1; then
        log "$what is not answering on $host:$port; starting the local server"
        "$starter" "$host" "$port" || warn "Starting $what returned an error; waiting for it anyway."
    elif is_local_host "$host"; then
        die "$what is not answering on $host:$port and is not installed here ($binary not found). Install and start it, or point Courier at another one."
    fi
    wait_for_port "$what" "$host" "$port" ||
        die "$what is not answering on $host:$port after ${SERVICE_WAIT_S}s. Start it (or fix its host/port settings) and run start again."
}

# A cluster (several RabbitMQ nodes) is usable while any node answers: its nodes are never started from here (a
# local `rabbitmq-server` is the machine's own node, not one of them), and a node that is down is named, not waited
# for, so `start` and `restart` work through the loss of a node as the API and the workers do.
ensure_cluster_broker() {
    local started=$SECONDS endpoint answering=() silent=()
    while :; do
        answering=() silent=()
        for endpoint in $BROKER_ENDPOINTS; do
            if port_open "${endpoint%:*}" "${endpoint##*:}"; then answering+=("$endpoint"); else silent+=("$endpoint"); fi
        done
        ((${#answering[@]} > 0)) && break
        ((SECONDS - started >= SERVICE_WAIT_S)) &&
            die "No RabbitMQ node answers ($BROKER_ENDPOINTS) after ${SERVICE_WAIT_S}s. Start the cluster's nodes and run start again."
        sleep 1
    done
    ((${#silent[@]} == 0)) || warn "RabbitMQ node(s) not answering: ${silent[*]}; going on with ${answering[*]} (the clients fail over)."
}

ensure_services() {
    local endpoint
    if [[ "$BROKER_ENDPOINTS" == *" "* ]]; then
        ensure_cluster_broker
    else
        ensure_service RabbitMQ "$BROKER_HOST" "$BROKER_PORT" rabbitmq-server start_rabbitmq
    fi
    for endpoint in $REDIS_ENDPOINTS; do
        ensure_service Redis "${endpoint%:*}" "${endpoint##*:}" redis-server start_redis
    done
    if [[ "$DB_KIND" == postgresql ]]; then
        ensure_service PostgreSQL "$DB_HOST" "$DB_PORT" pg_ctlcluster start_postgres
    fi
}

# Any HTTP status counts: the API is up (credentials are checked by provisioning). On a cluster, the first node's
# management API that answers becomes MANAGEMENT_URL (and Flower's broker API).
management_answers() {
    local url api_urls i=0
    read -ra api_urls <<<"$BROKER_API_URLS"
    for url in ${MANAGEMENT_URLS:-$MANAGEMENT_URL}; do
        if [[ "$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$url/api/overview" || true)" != 000 ]]; then
            MANAGEMENT_URL="$url"
            [[ -n "${api_urls[i]:-}" ]] && BROKER_API_URL="${api_urls[i]}"
            return 0
        fi
        i=$((i + 1))
    done
    return 1
}

ensure_management() {
    local started=$SECONDS
    management_answers && return 0
    if [[ "$MANAGEMENT_URLS" != *" "* ]] && is_local_host "$MANAGEMENT_HOST" && command -v rabbitmq-plugins >/dev/null 2>&1; then
        log "Enabling the RabbitMQ management plugin"
        rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 ||
            warn "rabbitmq-plugins enable rabbitmq_management failed (not permitted?); waiting for the API anyway."
    fi
    until management_answers; do
        ((SECONDS - started >= SERVICE_WAIT_S)) &&
            die "The RabbitMQ management API (${MANAGEMENT_URLS:-$MANAGEMENT_URL}, /api/overview) is not answering after ${SERVICE_WAIT_S}s. Enable it with: rabbitmq-plugins enable rabbitmq_management"
        sleep 1
    done
}

# The local RabbitMQ (with its management API), Redis and PostgreSQL that the tests and the benchmark use,
# started (and the management plugin enabled) when they do not answer: test.sh and bench.sh.
ensure_local_services() {
    MANAGEMENT_URL="${TEST_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
    MANAGEMENT_URLS="$MANAGEMENT_URL"
    MANAGEMENT_HOST="127.0.0.1"
    ensure_service RabbitMQ "${TEST_RABBITMQ_HOST:-127.0.0.1}" 5672 rabbitmq-server start_rabbitmq
    ensure_management
    ensure_service Redis "${TEST_REDIS_HOST:-127.0.0.1}" 6379 redis-server start_test_redis
    ensure_service PostgreSQL 127.0.0.1 5432 pg_ctlcluster start_postgres
}

# Say loudly when a Redis Courier uses persists nothing (tasks accepted with 202 can then become unknown when it
# restarts); in production, where the API, workers and recorder would refuse it, stop here with the same fix.
check_redis_persistence() {
    local status=0
    "$VENV/bin/python" - <<'PY' || status=$?
import sys

import redis

from app import redis_store
from app.config import get_settings

settings = get_settings()
unsafe = []
for url in redis_store.redis_urls(settings):
    try:
        found = redis_store.persistence(redis_store.client_for(url))
    except redis.RedisError as exc:
        print(f"warning: could not read the persistence of Redis {redis_store.describe(url)}: {exc}", file=sys.stderr)
        continue
    if not found.safe:
        unsafe.append(f"Redis {redis_store.describe(url)} persists nothing ({found.describe()})")
if unsafe:
    bar = "!" * 100
    lines = [bar, *unsafe, "Tasks accepted with 202 can become unknown (meta, result and history lost) if it restarts.",
             f"Fix: {redis_store.PERSISTENCE_FIX} (README, \"Redis durability\").", bar]
    print("\n".join(f"warning: {line}" for line in lines), file=sys.stderr)
    sys.exit(3 if redis_store.persistence_enforced(settings) else 0)
PY
    ((status != 3)) || die "ENVIRONMENT=production refuses a Redis that persists nothing (above); set REDIS_ACCEPT_NO_PERSISTENCE=true to accept the risk."
    ((status == 0 || status == 3)) || warn "Could not check the persistence of Redis (above)."
}

# Create the PostgreSQL database named by DATABASE_URL when it does not exist yet.
ensure_database() {
    [[ "$DB_KIND" == postgresql ]] || return 0
    "$VENV/bin/python" - <<'PY' || die "Could not create the database of DATABASE_URL (see above); create it by hand or grant CREATEDB."
import sys

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from app.config import get_settings

url = make_url(get_settings().sqlalchemy_url)
params = {"host": url.host, "port": url.port or 5432, "user": url.username, "password": url.password}
params = {k: v for k, v in params.items() if v is not None}
try:
    with psycopg.connect(dbname=url.database, connect_timeout=5, **params):
        sys.exit(0)
except psycopg.OperationalError as exc:
    if "does not exist" not in str(exc):
        print(f"error: cannot connect to PostgreSQL: {exc}", file=sys.stderr)
        sys.exit(1)
try:
    with psycopg.connect(dbname="postgres", connect_timeout=5, autocommit=True, **params) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
except psycopg.Error as exc:
    print(f"error: cannot create database {url.database!r}: {exc}", file=sys.stderr)
    sys.exit(1)
print(f"==> Created PostgreSQL database {url.database!r}", file=sys.stderr)
PY
}

# Name each setting of .env that nothing in Courier reads (a misspelled name is otherwise silently ignored), with
# the known name closest to it. Known: .env.example's names, Settings' fields, and what this script reads itself.
warn_unknown_settings() {
    local dir="${1:-$ROOT_DIR}" line
    [[ -f "$dir/.env" ]] || return 0
    while IFS= read -r line; do warn "$line"; done < <("$VENV/bin/python" - "$dir/.env" "$dir/.env.example" "${BASH_SOURCE[0]}" <<'PY'
import difflib
import re
import sys

from app.config import Settings

env, example, script = (open(path, encoding="utf-8").read() for path in sys.argv[1:4])
known = set(re.findall(r"^# ?([A-Z][A-Z0-9_]*)=", example, re.M)) | set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
known |= {name.upper() for name in Settings.model_fields} | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script))
for name in dict.fromkeys(re.findall(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=", env, re.M)):
    if name not in known:
        close = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for the settings there are."
        print(f".env sets {name}, which no part of Courier reads, so it has no effect: {hint}")
PY
    )
}

# Refuse to start the API on a port another process already listens on (uvicorn would exit with "[Errno 98]").
ensure_api_port_free() {
    running_pid api >/dev/null && return 0
    local host="$API_HOST"
    case "$host" in 0.0.0.0 | "" | "::" | "[::]") host=127.0.0.1 ;; esac
    if (exec 3<>"/dev/tcp/$host/$API_PORT") 2>/dev/null; then
        die "Port $API_PORT (API_PORT) on $host is already in use by another program; stop it, or set API_PORT in .env to a free port. Nothing was started."
    fi
}

prestart() {
    cd "$ROOT_DIR"
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    ensure_venv
    warn_unknown_settings
    read_endpoints
    ensure_services
    check_redis_persistence
    ensure_management
    log "Provisioning the RabbitMQ vhost and user"
    "$VENV/bin/python" -m app.cli provision ||
        die "Provisioning failed (above); nothing was started."
    ensure_database
    log "Migrating the database (alembic upgrade head)"
    "$VENV/bin/alembic" upgrade head || die "The database migration failed (above); nothing was started."
    log "Declaring the RabbitMQ topology"
    "$VENV/bin/python" -m app.cli topology declare || die "Declaring the RabbitMQ topology failed (above)."
}

# --- Native: processes -------------------------------------------------------------------------------------

services() {
    local tier
    printf '%s\n' api
    if [[ "${WORKER_PER_TIER,,}" == true || "$WORKER_PER_TIER" == 1 ]]; then
        for tier in "${TIERS[@]}"; do printf 'worker-%s\n' "$tier"; done
    else
        printf '%s\n' worker
    fi
    printf '%s\n' beat recorder flower
}

is_service() { grep -qx -- "$1" <<<"$(services)"; }

worker_name() {
    local tier="$1"
    if [[ -n "$CELERY_WORKER_NAME" ]]; then
        printf '%s-%s@%%h' "$CELERY_WORKER_NAME" "$tier"
    else
        printf '%s@%%h' "$tier"
    fi
}

# Fill SERVICE_CMD with the command line of a service.
service_command() {
    local service="$1" bin="$VENV/bin"
    local worker_opts=(--concurrency "$CELERY_WORKER_CONCURRENCY" --loglevel "$CELERY_LOG_LEVEL")
    case "$service" in
        api)
            # --timeout-worker-healthcheck: how long a replacement process may take to start serving in a rolling
            # restart (uvicorn's 5 s default is shorter than the API's warm-up on a busy 2-core machine).
            SERVICE_CMD=("$bin/uvicorn" app.main:app --host "$API_HOST" --port "$API_PORT" --workers "${API_WORKERS:-2}"
                --timeout-worker-healthcheck "$API_WAIT_S")
            ;;
        worker-*)
            local tier="${service#worker-}"
            SERVICE_CMD=("$bin/celery" -A app.tasks worker -Q "$tier" -n "$(worker_name "$tier")" "${worker_opts[@]}")
            ;;
        worker)
            local queues
            queues="$(IFS=,; printf '%s' "${TIERS[*]}")"
            SERVICE_CMD=("$bin/celery" -A app.tasks worker -Q "$queues" "${worker_opts[@]}")
            [[ -z "$CELERY_WORKER_NAME" ]] || SERVICE_CMD+=(-n "$CELERY_WORKER_NAME@%h")
            ;;
        beat)
            # --pidfile= : no pid file of celery's own (ours is in $RUN_DIR); remote control answers inspect ping.
            SERVICE_CMD=("$bin/celery" -A app.tasks beat --schedule "$VAR_DIR/celerybeat-schedule" --pidfile=
                --enable-remote-control --loglevel "$CELERY_LOG_LEVEL")
            ;;
        recorder) SERVICE_CMD=("$bin/python" -m app.recorder) ;;
        flower)
            # The credentials travel in FLOWER_BASIC_AUTH / FLOWER_BROKER_API (see start_service), not in argv,
            # so `ps` does not show them.
            # Flower's own enable_events (default true) turns task events on in every worker every 5 s; ours
            # follows TASK_EVENTS_ENABLED, which is off by default (events cost about a third of throughput).
            SERVICE_CMD=("$bin/celery" -A app.tasks flower --address="$API_HOST" --port="$FLOWER_PORT"
                --persistent=True --db="$VAR_DIR/flower.db" --enable_events="$(task_events_enabled)")
            ;;
        *) die "Unknown service '$service'." ;;
    esac
}

# TASK_EVENTS_ENABLED as Flower's option parser reads it (True/False), with the truthy words pydantic takes.
task_events_enabled() {
    case "${TASK_EVENTS_ENABLED,,}" in
        1 | true | t | yes | y | on) printf True ;;
        *) printf False ;;
    esac
}

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log' "$LOG_DIR" "$1"; }

# Print the pid of a service when its pid file names a live process this script started:
# a session leader (setsid) running from this checkout's .venv. Anything else is not ours to touch.
running_pid() {
    local file pid cmdline
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || ps -o args= -p "$pid")"
    [[ "$cmdline" == *"$VENV/bin/"* ]] || return 1
    printf '%s' "$pid"
}

start_service() {
    local service="$1" pidfile logfile pid waited=0
    pidfile="$(pid_file "$service")"
    logfile="$(log_file "$service")"
    if pid="$(running_pid "$service")"; then
        log "$service is already running (pid $pid)"
        return 0
    fi
    rm -f "$pidfile"
    if [[ "$service" == api ]]; then
        # The API's Prometheus files start afresh with the API (each worker wipes its own directory at boot).
        rm -rf "${METRICS_DIR:-$VAR_DIR/metrics}/api"
    fi
    service_command "$service"
    printf '\n--- %s starting %s\n' "$(date -u +%FT%TZ)" "$service" >>"$logfile"
    local env=(PYTHONUNBUFFERED=1)
    [[ "$service" == flower ]] &&
        env+=("FLOWER_BASIC_AUTH=$FLOWER_USER:$FLOWER_PASSWORD" "FLOWER_BROKER_API=$BROKER_API_URL")
    # A new session per service: its pid is its process group, so stop can reach every child.
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
    env "${env[@]}" setsid bash -c 'echo "$$" >"$0"; exec "$@"' "$pidfile" "${SERVICE_CMD[@]}" \
        >>"$logfile" 2>&1 </dev/null &
    until [[ -s "$pidfile" ]]; do
        ((waited++ >= 50)) && die "$service did not start (no pid file after 5 s); see $logfile"
        sleep 0.1
    done
    [[ "$service" == api ]] && api_fingerprint >"$(fingerprint_file)"
    log "Started $service (pid $(<"$pidfile")); log: $logfile"
}

# --- Native: the API's rolling restart ---------------------------------------------------------------------
#
# uvicorn's supervisor replaces its processes one at a time on SIGHUP: each replacement serves before the
# process it replaces is told to finish its requests and exit, on the same listening socket. The replacements
# are spawned with the supervisor's environment, which holds the settings it was started with, so a rolling
# restart is only right while those are unchanged: the API's command line and every setting of .env.example,
# recorded (as hashes, never values) when the API starts.

fingerprint_file() { printf '%s/api.settings' "$RUN_DIR"; }

settings_names() { sed -n 's/^#\{0,1\} \{0,1\}\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$ROOT_DIR/.env.example" | sort -u; }

# One "NAME <sha256 of its value>" line per setting (or "NAME unset"), and one for the API's command line.
api_fingerprint() {
    local name
    service_command api
    printf 'command-line %s\n' "$(printf '%s\0' "${SERVICE_CMD[@]}" | sha256sum | cut -c1-64)"
    while read -r name; do
        if [[ -v "$name" ]]; then
            printf '%s %s\n' "$name" "$(printf '%s' "${!name}" | sha256sum | cut -c1-64)"
        else
            printf '%s unset\n' "$name"
        fi
    done < <(settings_names)
}

# The names whose value differs from what the running API was started with (all of them when unrecorded).
changed_api_settings() {
    local file
    file="$(fingerprint_file)"
    if [[ ! -f "$file" ]]; then
        printf 'its settings (not recorded at its start)\n'
        return
    fi
    # (diff exits 1 when they differ, which is the case looked for)
    { diff <(sort "$file") <(api_fingerprint | sort) || true; } | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' | sort -u
}

# The uvicorn processes serving requests under the supervisor `pid` (its spawned children).
api_processes() {
    local child
    for child in $(pgrep -P "$1" || true); do
        tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null | grep -q 'multiprocessing.spawn' && printf '%s\n' "$child"
    done
    return 0
}

# Replace the API's processes one by one (SIGHUP to uvicorn's supervisor); fail when they were not all replaced.
reload_api() {
    local pid="$1" logfile started=$SECONDS wanted="${API_WORKERS:-2}" old=() now=() child left
    logfile="$(log_file api)"
    mapfile -t old < <(api_processes "$pid")
    printf '\n--- %s rolling restart of api\n' "$(date -u +%FT%TZ)" >>"$logfile"
    log "Replacing the API's processes one at a time (pid $pid keeps the port)"
    kill -HUP "$pid"
    while ((SECONDS - started < API_WAIT_S + STOP_WAIT_S)); do
        sleep 0.5
        kill -0 "$pid" 2>/dev/null || die "The API's supervisor (pid $pid) exited during the restart; see $logfile"
        left=0
        for child in "${old[@]}"; do kill -0 "$child" 2>/dev/null && left=$((left + 1)); done
        mapfile -t now < <(api_processes "$pid")
        if ((left == 0 && ${#now[@]} == wanted)); then
            api_fingerprint >"$(fingerprint_file)"
            log "Replaced the API's processes (${old[*]} -> ${now[*]})"
            return 0
        fi
        if sed -n '/rolling restart of api$/,$p' "$logfile" | grep -q 'aborting the restart'; then
            break
        fi
    done
    printf 'error: the API was not fully replaced: a new process did not start serving (%s still serve). Last log lines:\n' \
        "$left of its ${#old[@]} old processes" >&2
    tail -n 30 "$logfile" >&2 || true
    return 1
}

# Restart one service: the API rolling when it runs with today's settings, anything else stopped and started.
restart_service() {
    local service="$1" pid changed
    if [[ "$service" == api ]] && pid="$(running_pid api)"; then
        changed="$(changed_api_settings | paste -sd, | sed 's/,/, /g')"
        if [[ -z "$changed" ]]; then
            reload_api "$pid"
            return
        fi
        warn "The API's settings changed since it started ($changed): restarting it whole, so it stops answering for a few seconds."
    fi
    stop_services "$service"
    start_service "$service"
}

health_code() {
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$(api_base_url)/api/v1/tasks/health" || true
}

dead_services() {
    local service
    while read -r service; do
        running_pid "$service" >/dev/null || printf '%s\n' "$service"
    done < <(services)
}

# Wait for the health endpoint to say 200; fail early when a service has died.
wait_until_healthy() {
    local started=$SECONDS service dead=()
    while ((SECONDS - started < API_WAIT_S)); do
        [[ "$(health_code)" == 200 ]] && return 0
        mapfile -t dead < <(dead_services)
        if ((${#dead[@]} > 0)); then
            sleep 2 # others failing the same way exit within moments; report them together
            mapfile -t dead < <(dead_services)
            break
        fi
        sleep 1
    done
    if ((${#dead[@]} > 0)); then
        printf 'error: %s exited during start. Last log lines:\n' "${dead[*]}" >&2
        for service in "${dead[@]}"; do
            printf '\n--- %s\n' "$(log_file "$service")" >&2
            tail -n 30 "$(log_file "$service")" >&2 || true
        done
    else
        printf 'error: %s/api/v1/tasks/health did not answer 200 within %ss. It says:\n' "$(api_base_url)" "$API_WAIT_S" >&2
        curl -s -m 5 "$(api_base_url)/api/v1/tasks/health" >&2 || true
        printf '\nLogs are in %s.\n' "$LOG_DIR" >&2
    fi
    printf '\nThe services that did start are still running; see "%s status", then "%s stop".\n' "$0" "$0" >&2
    return 1
}

print_summary() {
    local flower_host="$API_HOST"
    case "$flower_host" in 0.0.0.0 | "" | "::" | "[::]") flower_host=127.0.0.1 ;; esac
    cat <<EOF

Courier is up.
  Console              $(api_base_url)/console  (sign in with an admin or viewer key: .venv/bin/python -m app.cli create-api-key --name NAME --role viewer)
  API docs             $(api_base_url)/docs
  Health               $(api_base_url)/api/v1/tasks/health  (liveness: /api/v1/tasks/health/live)
  Metrics              $(api_base_url)/metrics  (Prometheus; operator view: .venv/bin/python -m app.cli status --watch 2)
  Flower               http://$flower_host:$FLOWER_PORT  (user $FLOWER_USER)
  RabbitMQ management  ${MANAGEMENT_URLS// /, }  (vhost ${RABBITMQ_VHOST:-courier})
  Logs                 $LOG_DIR/<service>.log  (./scripts/start_tasks.sh logs [service])
EOF
}

native_start() {
    local service
    ensure_api_port_free
    prestart
    while read -r service; do
        start_service "$service"
    done < <(services)
    log "Waiting for $(api_base_url)/api/v1/tasks/health"
    wait_until_healthy || exit 1
    print_summary
}

# Stop every service that has a pid file.
native_stop() {
    local file services=()
    shopt -s nullglob
    for file in "$RUN_DIR"/*.pid; do services+=("$(basename "$file" .pid)"); done
    shopt -u nullglob
    ((${#services[@]} == 0)) || stop_services "${services[@]}"
    log "Stopped. RabbitMQ, Redis and PostgreSQL were left running."
}

# Replace every process without stopping the whole stack: provision and migrate first (the running processes
# keep working meanwhile), then one service after another, so at most one of them is down at a time.
native_restart() {
    local service
    prestart
    while read -r service; do
        restart_service "$service" || exit 1
    done < <(services)
    log "Waiting for $(api_base_url)/api/v1/tasks/health"
    wait_until_healthy || exit 1
    print_summary
}

# Stop the named services that have a pid file: SIGTERM to the main process (celery's warm shutdown lets the
# running tasks finish and stops its own pool), then SIGKILL to the whole process group after STOP_WAIT_S.
stop_services() {
    local service pid waited=0 alive
    local -A pids=()
    for service in "$@"; do
        [[ -f "$(pid_file "$service")" ]] || continue
        if pid="$(running_pid "$service")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids[$service]="$pid"
            log "Stopping $service (pid $pid)"
        else
            log "$service was not running; removing its stale pid file"
            rm -f "$(pid_file "$service")"
        fi
    done
    while ((${#pids[@]} > 0)); do
        alive=()
        for service in "${!pids[@]}"; do
            if kill -0 -- "-${pids[$service]}" 2>/dev/null; then
                alive+=("$service")
            else
                rm -f "$(pid_file "$service")"
                unset "pids[$service]"
            fi
        done
        ((${#alive[@]} == 0)) && break
        if ((waited >= STOP_WAIT_S * 2)); then
            for service in "${alive[@]}"; do
                warn "$service did not stop within ${STOP_WAIT_S}s; killing its process group"
                kill -KILL -- "-${pids[$service]}" 2>/dev/null || true
            done
            # Until the killed are gone (5 s at most), so a restart finds their ports free.
            for ((waited = 0; waited < 10; waited++)); do
                alive=()
                for service in "${!pids[@]}"; do
                    kill -0 -- "-${pids[$service]}" 2>/dev/null && alive+=("$service")
                done
                ((${#alive[@]} == 0)) && break
                sleep 0.5
            done
            for service in "${!pids[@]}"; do rm -f "$(pid_file "$service")"; done
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

native_status() {
    local service pid down=0 file
    local -A listed=()
    while read -r service; do
        listed[$service]=1
        if pid="$(running_pid "$service")"; then
            printf '%-14s running  pid %s\n' "$service" "$pid"
        else
            printf '%-14s stopped\n' "$service"
            down=1
        fi
    done < <(services)
    # Services started under another configuration (e.g. WORKER_PER_TIER changed since start).
    shopt -s nullglob
    for file in "$RUN_DIR"/*.pid; do
        service="$(basename "$file" .pid)"
        [[ -n "${listed[$service]:-}" ]] && continue
        if pid="$(running_pid "$service")"; then
            printf '%-14s running  pid %s  (not in the current configuration)\n' "$service" "$pid"
        fi
    done
    shopt -u nullglob
    return "$down"
}

native_logs() {
    local files=() service
    if (($# > 0)); then
        is_service "$1" || [[ -f "$(log_file "$1")" ]] || die "Unknown service '$1'. Services: $(services | tr '\n' ' ')"
        files=("$(log_file "$1")")
    else
        while read -r service; do
            [[ -f "$(log_file "$service")" ]] && files+=("$(log_file "$service")")
        done < <(services)
        ((${#files[@]} > 0)) || die "No logs yet in $LOG_DIR; start the stack first."
    fi
    exec tail -n 100 -F "${files[@]}"
}

native_health() {
    local rc=0 code
    [[ -x "$VENV/bin/python" ]] || die ".venv is missing; run ./scripts/start_tasks.sh start first."
    (cd "$ROOT_DIR" && "$VENV/bin/python" -m app.cli health) || rc=1
    code="$(health_code)"
    printf '%-15s %-5s %10s  %s/api/v1/tasks/health\n' http "$([[ "$code" == 200 ]] && echo up || echo down)" "HTTP $code" "$(api_base_url)"
    [[ "$code" == 200 ]] || rc=1
    return "$rc"
}

run_native() {
    local command="$1"
    shift
    case "$command" in
        start) native_start ;;
        stop) native_stop ;;
        restart) native_restart ;;
        status) native_status ;;
        logs) native_logs "$@" ;;
        health) native_health ;;
    esac
}

main() {
    local command="${1:-}"
    case "$command" in
        start | stop | restart | status | health) (($# == 1)) || {
            usage
            exit 2
        } ;;
        logs) (($# <= 2)) || {
            usage
            exit 2
        } ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        "")
            usage
            exit 2
            ;;
        *)
            printf "error: unknown command '%s'\n\n" "$command" >&2
            usage
            exit 2
            ;;
    esac
    shift
    cd "$ROOT_DIR"
    load_env_file
    apply_defaults
    local mode
    mode="$(runtime)"
    if [[ "$mode" == compose ]]; then
        run_compose "$command" "$@"
    else
        run_native "$command" "$@"
    fi
}

# Sourced (by scripts/test.sh) it only defines its functions; executed, it runs the command.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
