# shellcheck shell=bash
# Progress and failure output shared by the stack (testing/stack) and the control plane
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
