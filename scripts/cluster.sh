#!/usr/bin/env bash
# A Courier cluster on one machine: three RabbitMQ 3.x nodes clustered together (each with the management
# plugin) and a Redis primary, its replica and three Sentinels, all on free loopback ports, all run as the
# current user from a folder this script owns. For the cluster tests (tests/cluster) and for an operator who
# wants to try failover before running it on real machines (README, "Running on a cluster").
#
#   ./scripts/cluster.sh start | stop | status | env
#   ./scripts/cluster.sh start-node N | kill-node N        # RabbitMQ node N (1..3): start again, or kill -9
#   ./scripts/cluster.sh start-redis N | kill-redis N      # Redis server N (1 = first primary, 2 = replica)
#
# CLUSTER_DIR (default $VAR_DIR/cluster, i.e. ./var/cluster) holds everything: data, logs, pid files, the
# Erlang cookie, and `cluster.env`, the Courier settings that point at this cluster (`env` prints them; source
# them or copy them to .env). The shared services on the default ports (RabbitMQ :5672/:15672, Redis :6379)
# are never touched; the nodes only register their names with the machine's epmd, as any node does.
# `stop` kills what `start` started and deletes CLUSTER_DIR.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT_DIR
readonly RABBITMQ_BIN=/usr/lib/rabbitmq/bin
readonly NODES=(1 2 3)
readonly REDIS_SERVERS=(1 2)
readonly SENTINELS=(1 2 3)
#: The Sentinel master name Courier asks for (REDIS_SENTINEL_MASTER).
readonly SENTINEL_MASTER=courier
#: Bounded waits, in seconds.
readonly NODE_WAIT_S=90
readonly REDIS_WAIT_S=20

VAR_DIR="${VAR_DIR:-$ROOT_DIR/var}"
[[ "$VAR_DIR" == /* ]] || VAR_DIR="$ROOT_DIR/${VAR_DIR#./}"
CLUSTER_DIR="${CLUSTER_DIR:-$VAR_DIR/cluster}"
[[ "$CLUSTER_DIR" == /* ]] || CLUSTER_DIR="$ROOT_DIR/${CLUSTER_DIR#./}"
readonly CLUSTER_DIR
readonly STATE="$CLUSTER_DIR/state"
readonly SETTINGS_FILE="$CLUSTER_DIR/cluster.env"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# --- Ports and names ---------------------------------------------------------------------------------------

# N TCP ports nothing listens on now, one a line (bound together, then released).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for sock in socks:
    sock.bind(("127.0.0.1", 0))
print("\n".join(str(sock.getsockname()[1]) for sock in socks))
EOF
}

# Choose every port and the node names once, and keep them in $STATE (a restarted node needs the same ones).
# A RabbitMQ node uses its AMQP port, its distribution port, and (rabbitmqctl's side) a range above
# distribution + 10000; its management listener is a port of its own.
plan() {
    mkdir -p "$CLUSTER_DIR"
    local ports id
    mapfile -t ports < <(free_ports 11)
    id="c$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    {
        echo "ID=$id"
        for n in "${NODES[@]}"; do
            echo "AMQP_PORT_$n=${ports[n - 1]}"
            echo "MGMT_PORT_$n=${ports[n + 2]}"
        done
        echo "REDIS_PORT_1=${ports[6]}"
        echo "REDIS_PORT_2=${ports[7]}"
        for s in "${SENTINELS[@]}"; do echo "SENTINEL_PORT_$s=${ports[s + 7]}"; done
        # Distribution ports: a free block of 3 in the 25000-29999 range, so rabbitmqctl's +10000 stays <65536.
        echo "DIST_BASE=$(free_dist_base)"
    } >"$STATE"
}

free_dist_base() {
    python3 <<'EOF'
import random, socket
for _ in range(200):
    base = random.randrange(25000, 29990)
    try:
        socks = []
        for port in (*range(base, base + 3), *range(base + 10000, base + 10000 + 33)):
            sock = socket.socket(); socks.append(sock); sock.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for sock in socks: sock.close()
    print(base); break
else:
    raise SystemExit("no free block of distribution ports")
EOF
}

load_state() {
    [[ -f "$STATE" ]] || die "No cluster in $CLUSTER_DIR (run: $0 start)."
    # shellcheck disable=SC1090
    source "$STATE"
}

node_name() { printf '%s-%s@localhost' "$ID" "$1"; }
node_dir() { printf '%s/rabbit%s' "$CLUSTER_DIR" "$1"; }
var() {
    local name="$1_$2"
    printf '%s' "${!name}"
}

# --- RabbitMQ ----------------------------------------------------------------------------------------------

# The environment of node N: its own name, ports, config and data; the cluster's Erlang cookie in $HOME.
node_env() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    export HOME="$CLUSTER_DIR/home"
    export RABBITMQ_CONF_ENV_FILE="$CLUSTER_DIR/rabbitmq-env.conf" # empty: /etc's names the shared node
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME="$(node_name "$n")"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT="$(var AMQP_PORT "$n")"
    export RABBITMQ_DIST_PORT=$((DIST_BASE + n - 1))
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
    export ERL_EPMD_ADDRESS=127.0.0.1
    # One scheduler, no busy waiting: three nodes share a small machine with the tests and other work.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
}

ctl() {
    local n="$1"
    shift
    (node_env "$n" && "$RABBITMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

write_node_files() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    mkdir -p "$dir/mnesia" "$dir/log" "$CLUSTER_DIR/home"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(var AMQP_PORT "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(var MGMT_PORT "$n")
loopback_users = none
cluster_name = courier-$ID
# A node cut off from the majority (a network split, or a VM frozen past net_ticktime) pauses and closes its
# clients' connections, so they fail over, and rejoins on its own when it sees the majority again. The default,
# ignore, leaves it running partitioned for good: its clients stay on the wrong side until an operator restarts it.
cluster_partition_handling = pause_minority
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
log.file.level = warning
EOF
    echo '[rabbitmq_management].' >"$dir/enabled_plugins"
}

write_cookie() {
    local cookie="$CLUSTER_DIR/home/.erlang.cookie"
    mkdir -p "$CLUSTER_DIR/home"
    if [[ ! -f "$cookie" ]]; then
        od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie"
        chmod 400 "$cookie"
    fi
    : >"$CLUSTER_DIR/rabbitmq-env.conf"
}

node_pid() {
    local file
    file="$(node_dir "$1")/pid"
    [[ -s "$file" ]] && kill -0 "$(cat "$file")" 2>/dev/null && cat "$file"
}

# Launch node N in a session of its own (it outlives this script); `await_node` waits until it runs.
launch_node() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    if node_pid "$n" >/dev/null; then
        log "RabbitMQ node $(node_name "$n") already runs."
        return 0
    fi
    write_node_files "$n"
    rm -f "$dir/pid"
    log "Starting RabbitMQ node $(node_name "$n") on 127.0.0.1:$(var AMQP_PORT "$n") (management :$(var MGMT_PORT "$n"))."
    # The whole subshell's output goes to the log: a subshell left holding our stdout would keep a caller that
    # reads it (a pipe) waiting for as long as the node runs.
    (
        node_env "$n"
        exec setsid nohup "$RABBITMQ_BIN/rabbitmq-server"
    ) >"$dir/log/startup.log" 2>&1 </dev/null &
}

await_node() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    if ! ctl "$n" -q -t "$NODE_WAIT_S" wait "$dir/pid" >/dev/null 2>&1; then
        tail -n 30 "$dir/log/startup.log" >&2 || true
        die "RabbitMQ node $(node_name "$n") did not start within ${NODE_WAIT_S}s (log: $dir/log)."
    fi
}

start_node() {
    launch_node "$1"
    await_node "$1"
}

join_node() {
    local n="$1"
    log "Joining $(node_name "$n") to $(node_name 1)."
    # (The node logs errors about its connection-tracking tables while its app is stopped: expected, muted.)
    ctl "$n" -q stop_app >/dev/null 2>&1
    ctl "$n" -q join_cluster "$(node_name 1)" >/dev/null 2>&1 || die "$(node_name "$n") could not join the cluster."
    ctl "$n" -q start_app >/dev/null 2>&1
}

# --- Redis and Sentinel ------------------------------------------------------------------------------------

redis_dir() { printf '%s/redis%s' "$CLUSTER_DIR" "$1"; }
sentinel_dir() { printf '%s/sentinel%s' "$CLUSTER_DIR" "$1"; }

redis_auth_args() {
    [[ -n "${CLUSTER_REDIS_PASSWORD:-}" ]] && printf -- '--requirepass\n%s\n--masterauth\n%s\n' \
        "$CLUSTER_REDIS_PASSWORD" "$CLUSTER_REDIS_PASSWORD"
    return 0
}

pid_of() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }

# Redis server N, persisting every write to its append-only file (Courier refuses a Redis that persists nothing
# in production). Server 2 starts as the replica of server 1; a server started again after a failover is made
# a replica of whoever the Sentinels name as primary now.
start_redis() {
    local n="$1" dir port primary args=()
    dir="$(redis_dir "$n")"
    port="$(var REDIS_PORT "$n")"
    pid_of "$dir/pid" >/dev/null && return 0
    mkdir -p "$dir"
    primary="$(current_primary_port 2>/dev/null || true)"
    if [[ -z "$primary" && "$n" != 1 ]]; then primary="$REDIS_PORT_1"; fi
    if [[ -n "$primary" && "$primary" != "$port" ]]; then args+=(--replicaof 127.0.0.1 "$primary"); fi
    mapfile -t -O "${#args[@]}" args < <(redis_auth_args)
    log "Starting Redis $n on 127.0.0.1:$port${primary:+ (replica of :$primary)}."
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
        --save "" --daemonize yes --pidfile "$dir/pid" --logfile "$dir/redis.log" "${args[@]}"
    wait_for "redis :$port" "$REDIS_WAIT_S" redis_answers "$port"
}

redis_answers() {
    REDISCLI_AUTH="${CLUSTER_REDIS_PASSWORD:-}" redis-cli -p "$1" ping 2>/dev/null | grep -q PONG
}

start_sentinel() {
    local s="$1" dir port
    dir="$(sentinel_dir "$s")"
    port="$(var SENTINEL_PORT "$s")"
    pid_of "$dir/pid" >/dev/null && return 0
    mkdir -p "$dir"
    if [[ ! -f "$dir/sentinel.conf" ]]; then # Sentinel rewrites its file with what it learns: write it once
        {
            echo "port $port"
            echo "bind 127.0.0.1"
            echo "dir $dir"
            echo "sentinel monitor $SENTINEL_MASTER 127.0.0.1 $REDIS_PORT_1 2"
            echo "sentinel down-after-milliseconds $SENTINEL_MASTER 1000"
            echo "sentinel failover-timeout $SENTINEL_MASTER 10000"
            echo "sentinel parallel-syncs $SENTINEL_MASTER 1"
            [[ -n "${CLUSTER_REDIS_PASSWORD:-}" ]] && echo "sentinel auth-pass $SENTINEL_MASTER $CLUSTER_REDIS_PASSWORD"
        } >"$dir/sentinel.conf"
    fi
    log "Starting Sentinel $s on 127.0.0.1:$port."
    redis-server "$dir/sentinel.conf" --sentinel --daemonize yes --pidfile "$dir/pid" --logfile "$dir/sentinel.log"
    wait_for "sentinel :$port" "$REDIS_WAIT_S" sentinel_answers "$port"
}

sentinel_answers() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

# The port of the Redis primary the Sentinels name now.
current_primary_port() {
    local s answer
    for s in "${SENTINELS[@]}"; do
        answer="$(redis-cli -p "$(var SENTINEL_PORT "$s")" sentinel get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null |
            sed -n 2p)" || continue
        [[ -n "$answer" ]] && {
            echo "$answer"
            return 0
        }
    done
    return 1
}

wait_for() {
    local what="$1" limit="$2" i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    die "$what did not answer within ${limit}s (logs under $CLUSTER_DIR)."
}

# --- Commands ----------------------------------------------------------------------------------------------

write_settings() {
    local hosts="" mgmt="" sentinels="" n s
    for n in "${NODES[@]}"; do
        hosts+="${hosts:+,}127.0.0.1:$(var AMQP_PORT "$n")"
        mgmt+="${mgmt:+,}http://127.0.0.1:$(var MGMT_PORT "$n")"
    done
    for s in "${SENTINELS[@]}"; do sentinels+="${sentinels:+,}127.0.0.1:$(var SENTINEL_PORT "$s")"; done
    cat >"$SETTINGS_FILE" <<EOF
# Courier settings for the cluster in $CLUSTER_DIR (written by scripts/cluster.sh start).
RABBITMQ_HOSTS=$hosts
RABBITMQ_MANAGEMENT_URLS=$mgmt
RABBITMQ_ADMIN_USER=guest
RABBITMQ_ADMIN_PASSWORD=guest
QUEUE_TYPE=quorum
REDIS_SENTINELS=$sentinels
REDIS_SENTINEL_MASTER=$SENTINEL_MASTER
EOF
}

cmd_start() {
    command -v redis-server >/dev/null || die "redis-server is not installed."
    [[ -x "$RABBITMQ_BIN/rabbitmq-server" ]] || die "RabbitMQ is not installed at $RABBITMQ_BIN."
    if [[ -f "$STATE" ]]; then
        load_state
    else
        plan
        load_state
    fi
    write_cookie
    local n s
    for n in "${NODES[@]}"; do launch_node "$n"; done # in parallel: each boot takes ~10 s of one core
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in "${NODES[@]:1}"; do
        ctl 1 -q cluster_status 2>/dev/null | grep -q "$(node_name "$n")" || join_node "$n"
    done
    for n in "${REDIS_SERVERS[@]}"; do start_redis "$n"; done
    for s in "${SENTINELS[@]}"; do start_sentinel "$s"; done
    write_settings
    log "Cluster up. Courier settings: $SETTINGS_FILE"
}

cmd_stop() {
    [[ -f "$STATE" ]] || {
        log "No cluster in $CLUSTER_DIR."
        return 0
    }
    load_state
    local n s pid file
    for s in "${SENTINELS[@]}"; do
        pid="$(pid_of "$(sentinel_dir "$s")/pid" || true)"
        [[ -n "$pid" ]] && kill -9 "$pid"
    done
    for n in "${REDIS_SERVERS[@]}"; do
        pid="$(pid_of "$(redis_dir "$n")/pid" || true)"
        [[ -n "$pid" ]] && kill -9 "$pid"
    done
    for n in "${NODES[@]}"; do
        pid="$(node_pid "$n" || true)"
        if [[ -n "$pid" ]]; then
            log "Stopping $(node_name "$n")."
            kill -9 "$pid" 2>/dev/null || true
        fi
        # The node's epmd-less helpers (erl_child_setup, inet_gethost) die with it; its name leaves epmd too.
    done
    for file in "$CLUSTER_DIR"/rabbit*/pid "$CLUSTER_DIR"/redis*/pid "$CLUSTER_DIR"/sentinel*/pid; do
        [[ -f "$file" ]] || continue
        pid="$(cat "$file")"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    done
    rm -rf "$CLUSTER_DIR"
    log "Cluster stopped; $CLUSTER_DIR removed."
}

cmd_status() {
    load_state
    local n s down=0 pid
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            printf '%-28s up   pid %-7s amqp 127.0.0.1:%s  management :%s\n' "$(node_name "$n")" "$pid" \
                "$(var AMQP_PORT "$n")" "$(var MGMT_PORT "$n")"
        else
            printf '%-28s DOWN\n' "$(node_name "$n")"
            down=1
        fi
    done
    local primary
    primary="$(current_primary_port || true)"
    for n in "${REDIS_SERVERS[@]}"; do
        local role="replica"
        [[ "$(var REDIS_PORT "$n")" == "$primary" ]] && role="primary"
        if pid="$(pid_of "$(redis_dir "$n")/pid")"; then
            printf '%-28s up   pid %-7s 127.0.0.1:%s (%s)\n' "redis$n" "$pid" "$(var REDIS_PORT "$n")" "$role"
        else
            printf '%-28s DOWN\n' "redis$n"
            down=1
        fi
    done
    for s in "${SENTINELS[@]}"; do
        if pid="$(pid_of "$(sentinel_dir "$s")/pid")"; then
            printf '%-28s up   pid %-7s 127.0.0.1:%s\n' "sentinel$s" "$pid" "$(var SENTINEL_PORT "$s")"
        else
            printf '%-28s DOWN\n' "sentinel$s"
            down=1
        fi
    done
    return "$down"
}

cmd_kill_node() {
    load_state
    local pid
    pid="$(node_pid "$1")" || die "RabbitMQ node $1 is not running."
    kill -9 "$pid"
    log "Killed $(node_name "$1") (pid $pid)."
}

cmd_kill_redis() {
    load_state
    local pid
    pid="$(pid_of "$(redis_dir "$1")/pid")" || die "Redis $1 is not running."
    kill -9 "$pid"
    rm -f "$(redis_dir "$1")/pid"
    log "Killed redis$1 (pid $pid)."
}

main() {
    local command="${1:-}"
    case "$command" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env)
        [[ -f "$SETTINGS_FILE" ]] || die "No cluster in $CLUSTER_DIR (run: $0 start)."
        grep -v '^#' "$SETTINGS_FILE"
        ;;
    start-node | kill-node | start-redis | kill-redis)
        [[ "${2:-}" =~ ^[1-3]$ ]] || die "$command needs a number (1-3)."
        case "$command" in
        start-node) load_state && write_cookie && start_node "$2" ;;
        kill-node) cmd_kill_node "$2" ;;
        start-redis) load_state && start_redis "$2" ;;
        kill-redis) cmd_kill_redis "$2" ;;
        esac
        ;;
    -h | --help | help) usage ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
