# shellcheck shell=bash
# Shared helpers for the local test stack (RabbitMQ + MinIO + clamd).
# Sourced by stack-up.sh, stack-down.sh and service.sh; not meant to be run.
#
# Everything a running stack needs is recorded in <stack>/stack.env, so that
# service.sh and stack-down.sh work from that file alone (same ports, same
# credentials, same binaries) no matter which environment they are called from.

BAVS_STACK_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/lib.sh
source "$BAVS_STACK_SCRIPTS/../lib.sh"

# Debian's own entry points. /usr/sbin/rabbitmq-* are wrappers that `su` to the
# rabbitmq user and reset HOME (and with it the Erlang cookie), so we call the
# real scripts directly.
RABBITMQ_BIN_DIR=/usr/lib/rabbitmq/bin
CLAMD_BIN=/usr/sbin/clamd

# ---------------------------------------------------------------- output ----

bavs_fail_hint() { printf 'stop what is left with: BAVS_STACK_DIR=%s bash testing/stack/stack-down.sh' "${BAVS_STACK_DIR:-}"; }

# ------------------------------------------------------------- config ----

# Defaults for a new stack; each is overridable from the environment of
# stack-up.sh and then frozen into stack.env.
# shellcheck disable=SC2034 # used by the scripts that source this file
bavs_defaults() {
    : "${BAVS_STACK_DIR:=$BAVS_REPO_ROOT/target/stack}"
    : "${BAVS_RABBITMQ_NODENAME:=bavs@localhost}"
    # Every default port lies below Linux's ephemeral range (32768-60999): a port in it can be
    # taken as the local port of some client connection while its service is stopped, and the
    # service then cannot listen again (RabbitMQ: eaddrinuse) after a restart.
    : "${BAVS_RABBITMQ_PORT:=21672}"
    : "${BAVS_RABBITMQ_MANAGEMENT_PORT:=21673}"
    : "${BAVS_RABBITMQ_DIST_PORT:=21674}"
    : "${BAVS_RABBITMQ_EPMD_PORT:=21675}"
    # rabbitmqctl's own Erlang distribution listener. Debian's default range is
    # 35672-35682 (AMQP port + 30000), inside the ephemeral range; it gets ours.
    : "${BAVS_RABBITMQ_CTL_DIST_PORT_MIN:=21680}"
    : "${BAVS_MINIO_PORT:=29000}"
    : "${BAVS_MINIO_CONSOLE_PORT:=29001}"
    : "${BAVS_CLAMD_PORT:=23310}"
    # clamd runs the configuration the operator renders for the stack's policy (stack-up.sh):
    # its maxObjectSize ("<n>", "<n>K" or "<n>M", clamd's powers of 1024) becomes StreamMaxLength,
    # and MaxFileSize = MaxScanSize four times that. Small enough that the stream-limit test stays
    # quick; `just bench-worker` raises it for its 1 GiB run.
    : "${BAVS_CLAMD_STREAM_MAX_LENGTH:=128M}"
    # The policy's scanTimeoutSeconds (clamd's MaxScanTime is half of it; the worker's default).
    : "${BAVS_CLAMD_SCAN_TIMEOUT_SECONDS:=600}"
    # The policy's workers.concurrency, clamd's MaxThreads: every suite's workers share one clamd.
    : "${BAVS_CLAMD_MAX_THREADS:=12}"
    : "${BAVS_CLAMD_MAX_QUEUE:=200}"
    # readiness timeouts in seconds
    : "${BAVS_RABBITMQ_TIMEOUT:=60}"
    : "${BAVS_MINIO_TIMEOUT:=30}"
    : "${BAVS_CLAMD_TIMEOUT:=30}"
    : "${BAVS_NOTIFY_TARGET_ID:=SCAN}"
    : "${BAVS_EXCHANGE:=bucket-av.events}"
    : "${BAVS_EXCHANGE_TYPE:=direct}"
    : "${BAVS_ROUTING_KEY:=scan}"
    BAVS_RABBITMQ_CTL_DIST_PORT_MAX=$((BAVS_RABBITMQ_CTL_DIST_PORT_MIN + 9))
}

# Derived paths inside the stack dir (never stored anywhere else).
# shellcheck disable=SC2034 # used by the scripts that source this file
bavs_paths() {
    local s=$BAVS_STACK_DIR
    STACK_ENV=$s/stack.env
    STACK_MARKER=$s/.bavs-stack

    RMQ_DIR=$s/rabbitmq
    RMQ_ENV_FILE=$RMQ_DIR/env.sh
    RMQ_CONF=$RMQ_DIR/rabbitmq.conf
    RMQ_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
    RMQ_HOME=$RMQ_DIR/home
    RMQ_MNESIA=$RMQ_DIR/mnesia
    RMQ_LOG_DIR=$RMQ_DIR/log
    RMQ_STARTUP_LOG=$RMQ_LOG_DIR/startup.log
    RMQ_PID=$RMQ_DIR/rabbitmq.pid          # the Erlang VM (beam.smp), written by RabbitMQ
    RMQ_WRAPPER_PID=$RMQ_DIR/wrapper.pid   # the rabbitmq-server shell script around it
    RMQ_EPMD_PID=$RMQ_DIR/epmd.pid

    MINIO_DIR=$s/minio
    MINIO_DATA=$MINIO_DIR/data
    MINIO_QUEUE_DIR=$MINIO_DIR/events-queue
    MINIO_ENV_FILE=$MINIO_DIR/minio.env
    MINIO_LOG=$MINIO_DIR/minio.log
    MINIO_PID=$MINIO_DIR/minio.pid

    CLAMD_DIR=$s/clamd
    CLAMD_CONF=$CLAMD_DIR/clamd.conf
    CLAMD_POLICY=$CLAMD_DIR/policy.yaml
    CLAMD_DB=$CLAMD_DIR/db
    CLAMD_TMP=$CLAMD_DIR/tmp
    CLAMD_SOCKET=$CLAMD_DIR/clamd.sock
    CLAMD_LOG=$CLAMD_DIR/clamd.log
    CLAMD_STARTUP_LOG=$CLAMD_DIR/startup.log
    CLAMD_PID=$CLAMD_DIR/clamd.pid

    RMQ_LOG_FILE=$RMQ_LOG_DIR/$BAVS_RABBITMQ_NODENAME.log
}

# Load the configuration of an existing stack (for service.sh / stack-down.sh).
# Returns 1 when there is no stack.env.
bavs_load_stack() {
    : "${BAVS_STACK_DIR:=$BAVS_REPO_ROOT/target/stack}"
    [[ -f $BAVS_STACK_DIR/stack.env ]] || return 1
    set -a
    # shellcheck source=/dev/null
    . "$BAVS_STACK_DIR/stack.env"
    set +a
    bavs_defaults
    bavs_paths
}

# bavs_stack_binaries: the two binaries of this workspace the stack scripts run, built unless
# given: BAVS_OPERATOR_BIN (`bucket-av-operator clamd-config` renders clamd.conf) and
# BAVS_STACK_PROBE_BIN (`stack-probe`, the self-checks). They are built the way `just test` builds
# the tests and binaries (--workspace --features services), so that a first run builds nothing twice.
bavs_stack_binaries() {
    local target=${CARGO_TARGET_DIR:-$BAVS_REPO_ROOT/target}/debug bins=()
    [[ -n ${BAVS_OPERATOR_BIN:-} ]] || bins+=(bucket-av-operator)
    [[ -n ${BAVS_STACK_PROBE_BIN:-} ]] || bins+=(stack-probe)
    if ((${#bins[@]})); then
        bavs_step "building ${bins[*]} (clamd.conf, self-checks)"
        (cd "$BAVS_REPO_ROOT" && cargo build --locked -q --workspace --features services "${bins[@]/#/--bin=}") ||
            bavs_die "cargo build of ${bins[*]} failed; or set BAVS_OPERATOR_BIN and BAVS_STACK_PROBE_BIN to built binaries"
    fi
    : "${BAVS_OPERATOR_BIN:=$target/bucket-av-operator}"
    : "${BAVS_STACK_PROBE_BIN:=$target/stack-probe}"
    [[ -x $BAVS_OPERATOR_BIN ]] || bavs_die "BAVS_OPERATOR_BIN=$BAVS_OPERATOR_BIN is not an executable"
    [[ -x $BAVS_STACK_PROBE_BIN ]] || bavs_die "BAVS_STACK_PROBE_BIN=$BAVS_STACK_PROBE_BIN is not an executable"
}

# "1100M" -> 1153433600 (clamd's K/M suffixes are powers of 1024).
bavs_size_bytes() {
    local v=$1
    case $v in
        *[kK]) echo $((${v%?} * 1024)) ;;
        *[mM]) echo $((${v%?} * 1024 * 1024)) ;;
        *) echo $((v)) ;;
    esac
}

# ---------------------------------------------------------------- ports ----

# bavs_require_free SERVICE PORT...: fail clearly if any port is taken. A port still held is
# given BAVS_PORT_RELEASE_SECONDS (10) to be released first: right after a stop, a listener of
# the stopped process can outlive its PID for a moment (seen with MinIO's console port when
# service.sh restarted a MinIO that had restarted itself through its admin API).
bavs_require_free() {
    local service=$1 port who deadline
    shift
    deadline=$((SECONDS + ${BAVS_PORT_RELEASE_SECONDS:-10}))
    for port in "$@"; do
        while bavs_port_in_use "$port" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if bavs_port_in_use "$port"; then
            who=$(bavs_port_owner "$port")
            bavs_die "$service: port $port on 127.0.0.1 is already in use${who:+ by $who}; stop that process or choose another port (see the BAVS_*_PORT variables in testing/stack/lib.sh)"
        fi
    done
}

# ------------------------------------------------------------- rabbitmq ----

# Run one of RabbitMQ's scripts (rabbitmqctl, rabbitmq-diagnostics, ...) with
# the environment of this stack's node.
bavs_rmq() {
    local tool=$1
    shift
    (
        set -a
        # shellcheck source=/dev/null
        . "$RMQ_ENV_FILE"
        set +a
        exec "$RABBITMQ_BIN_DIR/$tool" "$@"
    )
}

bavs_rabbitmq_running() { bavs_pid_alive "$RMQ_PID" beam >/dev/null; }

bavs_rabbitmq_start() {
    local deadline pid
    if bavs_rabbitmq_running; then
        bavs_info "rabbitmq already running (pid $(<"$RMQ_PID"))"
        return 0
    fi
    bavs_require_free rabbitmq "$BAVS_RABBITMQ_PORT" "$BAVS_RABBITMQ_MANAGEMENT_PORT" "$BAVS_RABBITMQ_DIST_PORT"
    mkdir -p "$RMQ_LOG_DIR" "$RMQ_MNESIA"
    rm -f "$RMQ_PID"
    (
        set -a
        # shellcheck source=/dev/null
        . "$RMQ_ENV_FILE"
        set +a
        cd "$RMQ_HOME" || exit 1
        bavs_spawn "$RMQ_WRAPPER_PID" "$RMQ_STARTUP_LOG" "$RABBITMQ_BIN_DIR/rabbitmq-server" ||
            bavs_die "could not start $RABBITMQ_BIN_DIR/rabbitmq-server (no pid file $RMQ_WRAPPER_PID)"
    )
    deadline=$((SECONDS + BAVS_RABBITMQ_TIMEOUT))
    # 1. cheap polls while the node boots (a CLI call costs ~1 s of CPU):
    #    the AMQP port accepts and the management API answers with our credentials
    until (exec 3<>"/dev/tcp/127.0.0.1/$BAVS_RABBITMQ_PORT") 2>/dev/null &&
        curl -fsS -o /dev/null -m 5 -u "$BAVS_RABBITMQ_USER:$BAVS_RABBITMQ_PASSWORD" \
            "http://127.0.0.1:$BAVS_RABBITMQ_MANAGEMENT_PORT/api/overview" 2>/dev/null; do
        bavs_record_epmd
        bavs_rabbitmq_running || bavs_pid_alive "$RMQ_WRAPPER_PID" rabbitmq-server >/dev/null ||
            bavs_fail_with_log rabbitmq "$(bavs_rmq_log)" "the node exited during startup"
        ((SECONDS < deadline)) || bavs_fail_with_log rabbitmq "$(bavs_rmq_log)" "AMQP port / management API not ready after ${BAVS_RABBITMQ_TIMEOUT}s"
        sleep 0.5
    done
    # 2. the node itself confirms that all its listeners accept connections
    until bavs_rmq rabbitmq-diagnostics -q -n "$BAVS_RABBITMQ_NODENAME" -t 10 check_port_connectivity >/dev/null 2>&1; do
        ((SECONDS < deadline)) || bavs_fail_with_log rabbitmq "$(bavs_rmq_log)" "check_port_connectivity failed for ${BAVS_RABBITMQ_TIMEOUT}s"
        sleep 1
    done
    bavs_record_epmd
}

# Record the PID of the epmd that the node (or its CLI) started on our private
# epmd port. The port was free when the stack came up, so whatever epmd listens
# there now is ours; stack-down stops it by this PID.
bavs_record_epmd() {
    local pid
    bavs_pid_alive "$RMQ_EPMD_PID" epmd >/dev/null && return 0
    pid=$(bavs_port_pid "$BAVS_RABBITMQ_EPMD_PORT")
    if [[ -n $pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q epmd; then
        echo "$pid" >"$RMQ_EPMD_PID"
    fi
    return 0
}

# The most useful log to show: the node log once it exists, else startup output.
bavs_rmq_log() {
    if [[ -s $RMQ_LOG_FILE ]]; then echo "$RMQ_LOG_FILE"; else echo "$RMQ_STARTUP_LOG"; fi
}

bavs_rabbitmq_stop() {
    local i
    # SIGTERM to the Erlang VM is RabbitMQ's graceful shutdown (same as
    # `rabbitmqctl stop`, without the 1-2 s of CLI start-up).
    bavs_stop_pid "rabbitmq node" "$RMQ_PID" beam 30 || true
    # The rabbitmq-server script exits with the VM; make sure.
    for ((i = 0; i < 30; i++)); do
        bavs_pid_alive "$RMQ_WRAPPER_PID" rabbitmq-server >/dev/null || break
        sleep 0.1
    done
    bavs_stop_pid "rabbitmq-server script" "$RMQ_WRAPPER_PID" rabbitmq-server 5 || true
}

bavs_epmd_stop() {
    bavs_record_epmd
    bavs_stop_pid epmd "$RMQ_EPMD_PID" epmd 5 || true
}

# ---------------------------------------------------------------- clamd ----

# bavs_clamd_ping: PING over TCP with bash's /dev/tcp; succeeds on PONG.
bavs_clamd_ping() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "zPING\0" >&3
        IFS= read -r -d "" -u 3 reply || true
        [[ $reply == PONG ]]
    ' _ "$BAVS_CLAMD_PORT" 2>/dev/null
}

bavs_clamd_running() { bavs_pid_alive "$CLAMD_PID" clamd >/dev/null; }

bavs_clamd_start() {
    local deadline
    if bavs_clamd_running; then
        bavs_info "clamd already running (pid $(<"$CLAMD_PID"))"
        return 0
    fi
    bavs_require_free clamd "$BAVS_CLAMD_PORT"
    rm -f "$CLAMD_PID" "$CLAMD_SOCKET"
    # clamd forks into the background itself (Foreground no) and writes PidFile.
    if ! setsid "$CLAMD_BIN" --config-file="$CLAMD_CONF" </dev/null >>"$CLAMD_STARTUP_LOG" 2>&1; then
        bavs_fail_with_log clamd "$CLAMD_STARTUP_LOG" "clamd failed to start (see also $CLAMD_LOG)"
    fi
    deadline=$((SECONDS + BAVS_CLAMD_TIMEOUT))
    until bavs_clamd_ping && [[ -S $CLAMD_SOCKET ]] && bavs_clamd_running; do
        ((SECONDS < deadline)) || bavs_fail_with_log clamd "$CLAMD_LOG" "no PONG on 127.0.0.1:$BAVS_CLAMD_PORT after ${BAVS_CLAMD_TIMEOUT}s"
        sleep 0.2
    done
}

bavs_clamd_stop() {
    bavs_stop_pid clamd "$CLAMD_PID" clamd 20 || true
    rm -f "$CLAMD_SOCKET"
}

# ---------------------------------------------------------------- minio ----

bavs_minio_running() { bavs_pid_alive "$MINIO_PID" minio >/dev/null; }

bavs_minio_ready() {
    curl -fsS -o /dev/null -m 3 "http://127.0.0.1:$BAVS_MINIO_PORT/minio/health/ready" 2>/dev/null
}

bavs_minio_start() {
    local deadline
    if bavs_minio_running; then
        bavs_info "minio already running (pid $(<"$MINIO_PID"))"
        return 0
    fi
    [[ -x $BAVS_MINIO_BIN ]] || bavs_die "minio: binary $BAVS_MINIO_BIN is missing; run testing/stack/provision.sh"
    bavs_require_free minio "$BAVS_MINIO_PORT" "$BAVS_MINIO_CONSOLE_PORT"
    mkdir -p "$MINIO_DATA" "$MINIO_QUEUE_DIR"
    (
        set -a
        # shellcheck source=/dev/null
        . "$MINIO_ENV_FILE"
        set +a
        bavs_spawn "$MINIO_PID" "$MINIO_LOG" "$BAVS_MINIO_BIN" server "$MINIO_DATA" \
            --address "127.0.0.1:$BAVS_MINIO_PORT" \
            --console-address "127.0.0.1:$BAVS_MINIO_CONSOLE_PORT" \
            --certs-dir "$MINIO_DIR/certs" ||
            bavs_die "could not start $BAVS_MINIO_BIN (no pid file $MINIO_PID)"
    )
    deadline=$((SECONDS + BAVS_MINIO_TIMEOUT))
    until bavs_minio_ready; do
        bavs_minio_running || bavs_fail_with_log minio "$MINIO_LOG" "the server exited during startup"
        ((SECONDS < deadline)) || bavs_fail_with_log minio "$MINIO_LOG" "/minio/health/ready not 200 after ${BAVS_MINIO_TIMEOUT}s"
        sleep 0.2
    done
}

bavs_minio_stop() {
    bavs_stop_pid minio "$MINIO_PID" minio 20 || true
}

# ---------------------------------------------------------------- status ----

bavs_status_line() {
    local name=$1 pidfile=$2 pattern=$3 pid
    if pid=$(bavs_pid_alive "$pidfile" "$pattern"); then
        printf '%-9s running (pid %s)\n' "$name" "$pid"
        return 0
    fi
    printf '%-9s stopped\n' "$name"
    return 1
}
