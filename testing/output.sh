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
