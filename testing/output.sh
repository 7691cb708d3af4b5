# shellcheck shell=bash
# Progress and failure output, and the wait for a spawned service, shared by the stack (testing/stack) and the control plane
# (testing/cluster) scripts. Sourced by their lib.sh; not meant to be run.
# A lib.sh defines bavs_fail_hint to say, after a failure, what the user can do next.

bavs_step() { printf '==> %s\n' "$*"; }
bavs_info() { printf '    %s\n' "$*"; }
bavs_warn() { printf 'WARNING: %s\n' "$*" >&2; }
bavs_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# bavs_fail_with_log COMPONENT LOGFILE MESSAGE: fail, showing the tail of the component's log.
bavs_fail_with_log() {
    local component=$1 log=$2 msg=$3
    {
        printf 'ERROR: %s: %s\n' "$component" "$msg"
        printf '       log: %s\n' "$log"
        if [[ -s $log ]]; then
            printf '       last 20 lines:\n'
            tail -n 20 "$log" | sed 's/^/       | /'
        else
            printf '       (log is empty or missing)\n'
        fi
        if declare -F bavs_fail_hint >/dev/null; then
            printf '       (%s)\n' "$(bavs_fail_hint)"
        fi
    } >&2
    exit 1
}

# bavs_wait_for_exec PID: wait (up to 5 s) until the wrapper `bash -c` with
# PID has replaced itself with the command. The pid file is written before the
# exec, and while the kernel swaps the images /proc/PID/cmdline reads empty: a
# liveness check in that window would take a starting service for a dead one.
bavs_wait_for_exec() {
    local pid=$1 i args
    for ((i = 0; i < 100; i++)); do
        [[ -e /proc/$pid ]] || return 0 # gone: the caller's liveness check reports it
        mapfile -t -n 2 args < <(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)
        if ((${#args[@]} > 0)) && ! [[ ${args[0]} == *bash && ${args[1]:-} == -c ]]; then
            return 0
        fi
        sleep 0.05
    done
}

# bavs_kill_tree PID: SIGTERM to PID and every process under it (children first), so that a
# shell function's commands stop with it. Only processes this script started are ever named.
bavs_kill_tree() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        bavs_kill_tree "$child"
    done
    kill -TERM "$1" 2>/dev/null || true
}

# bavs_logged NAME LOG COMMAND...: runs COMMAND (a program or a shell function) with its output
# appended to LOG and its exit status as this function's, printing a heartbeat every
# BAVS_HEARTBEAT_SECONDS (default 30) while it runs: a cold build takes minutes, and silence reads
# as a hang. Each line says what is running, for how long, and where its log grows. Ctrl-C stops
# the command (by its PID) and exits (the caller's EXIT trap cleans up); otherwise the caller's
# INT/TERM traps are restored afterwards.
bavs_logged() {
    local name=$1 log=$2 every=${BAVS_HEARTBEAT_SECONDS:-30} started=$SECONDS next pid status=0 saved
    local interrupted=0
    shift 2
    saved=$(trap -p INT TERM)
    "$@" >>"$log" 2>&1 &
    pid=$!
    # shellcheck disable=SC2064 # expand now: stop this command, by its pid
    trap "bavs_kill_tree $pid; interrupted=1" INT TERM
    next=$((started + every))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= next)) && kill -0 "$pid" 2>/dev/null; then
            printf '    ... %s: %dm%02ds so far (log: %s, %s lines)\n' "$name" $(((SECONDS - started) / 60)) \
                $(((SECONDS - started) % 60)) "$log" "$(wc -l <"$log" 2>/dev/null || echo 0)"
            next=$((SECONDS + every))
        fi
    done
    wait "$pid" || status=$?
    ((interrupted == 0)) || exit 130
    trap - INT TERM
    [[ -z $saved ]] || eval "$saved"
    return "$status"
}
