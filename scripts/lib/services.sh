# shellcheck shell=bash
# Shared by scripts/start_tasks.sh and scripts/test.sh: the virtualenv, and the local servers Courier needs.
# Source it; it defines functions only.

COURIER_ROOT="${COURIER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"

log() { printf '[courier] %s\n' "$*" >&2; }
die() { printf '[courier] error: %s\n' "$*" >&2; exit 1; }

# ensure_venv [extras]: create .venv with Python >= 3.11 and install the project (with extras, e.g. "dev")
# when the venv is new or pyproject.toml changed since the last install.
ensure_venv() {
    local extras="${1:-}" python="" candidate stamp spec
    stamp="$COURIER_ROOT/.venv/.courier-installed${extras:+-$extras}"
    if [ ! -x "$COURIER_ROOT/.venv/bin/python" ]; then
        for candidate in python3.13 python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
                python="$candidate"; break
            fi
        done
        [ -n "$python" ] || die "Python 3.11 or newer is required (python3.11 not found)."
        log "Creating the virtualenv in .venv with $python."
        "$python" -m venv "$COURIER_ROOT/.venv"
    fi
    if [ ! -f "$stamp" ] || [ "$COURIER_ROOT/pyproject.toml" -nt "$stamp" ]; then
        spec="$COURIER_ROOT${extras:+[$extras]}"
        log "Installing Courier${extras:+ with [$extras]} into .venv."
        "$COURIER_ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip
        "$COURIER_ROOT/.venv/bin/python" -m pip install --quiet -e "$spec"
        touch "$stamp"
    fi
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port NAME HOST PORT [SECONDS]
wait_port() {
    local name="$1" host="$2" port="$3" limit="${4:-60}" i
    for ((i = 0; i < limit; i++)); do
        port_open "$host" "$port" && return 0
        sleep 1
    done
    die "$name did not answer on $host:$port within ${limit}s."
}

is_local() { case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac; }

# ensure_rabbitmq HOST PORT MANAGEMENT_URL: start a local server if installed and down, enable management.
ensure_rabbitmq() {
    local host="$1" port="$2" mgmt="$3" i
    if ! port_open "$host" "$port"; then
        is_local "$host" && command -v rabbitmq-server >/dev/null 2>&1 ||
            die "RabbitMQ is not answering on $host:$port and no local rabbitmq-server is installed."
        log "Starting RabbitMQ (rabbitmq-server -detached)."
        rabbitmq-server -detached >/dev/null 2>&1 || true
        wait_port RabbitMQ "$host" "$port" 90
    fi
    if ! curl -fsS -o /dev/null "$mgmt/api/overview" -u guest:guest 2>/dev/null &&
        ! curl -fsS -o /dev/null "$mgmt/" 2>/dev/null; then
        if is_local "$host" && command -v rabbitmq-plugins >/dev/null 2>&1; then
            log "Enabling the RabbitMQ management plugin."
            rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 ||
                log "Could not enable rabbitmq_management (not permitted?); enable it as the broker's admin."
        fi
        for ((i = 0; i < 60; i++)); do
            curl -fsS -o /dev/null "$mgmt/" 2>/dev/null && return 0
            sleep 1
        done
        die "The RabbitMQ management API is not answering at $mgmt (enable the rabbitmq_management plugin)."
    fi
}

# ensure_redis HOST PORT
ensure_redis() {
    local host="$1" port="$2"
    port_open "$host" "$port" && return 0
    is_local "$host" && command -v redis-server >/dev/null 2>&1 ||
        die "Redis is not answering on $host:$port and no local redis-server is installed."
    log "Starting Redis."
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    wait_port Redis "$host" "$port" 30
}

# ensure_postgres HOST PORT
ensure_postgres() {
    local host="$1" port="$2"
    port_open "$host" "$port" && return 0
    is_local "$host" && command -v pg_ctlcluster >/dev/null 2>&1 ||
        die "PostgreSQL is not answering on $host:$port and no local cluster is installed."
    log "Starting PostgreSQL."
    # shellcheck disable=SC2046
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start >/dev/null 2>&1 || true
    wait_port PostgreSQL "$host" "$port" 60
}
