# shellcheck shell=bash
# What the local stack (testing/stack) and the local control plane (testing/cluster) scripts share:
# output, the tools cache, Debian packages, starting, checking and stopping background processes
# by pid file, and port checks. Sourced by testing/stack/lib.sh, testing/stack/provision.sh and
# testing/cluster/lib.sh; not meant to be run. Nothing here knows a service: the libraries above
# say what runs where.

BAVS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=testing/output.sh
source "$BAVS_REPO_ROOT/testing/output.sh"

# Pinned tools built or downloaded once per machine, keyed by version.
BAVS_TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/bucket-av-scanner/tools"

# Every pinned Go tool links with -ldflags -w (no debug information), yet Go's compiler writes
# DWARF for every package it compiles; not writing it made a cold promtool build 5 % faster
# (147 s to 140 s, one A/B on 2 cores). GOFLAGS reaches every `go build` and `go install` below.
if [[ " ${GOFLAGS:-} " != *" -gcflags=all=-dwarf=false "* ]]; then
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-gcflags=all=-dwarf=false"
fi

# ------------------------------------------------------------- packages ----

# bavs_apt_install PACKAGE...: install Debian packages (as root; otherwise fail saying what to run).
# The output goes to $BAVS_TOOLS_DIR/apt.log, whose tail is shown when apt-get fails. The
# packages' postinst scripts try to start system services; without an init system that is
# refused, which is what we want (the scripts start their own instances).
bavs_apt_install() {
    local log=$BAVS_TOOLS_DIR/apt.log
    if [[ $(id -u) != 0 ]]; then
        bavs_die "missing Debian packages: $*
  run as root: apt-get update && apt-get install -y --no-install-recommends $*"
    fi
    mkdir -p "$BAVS_TOOLS_DIR"
    printf 'installing Debian packages: %s (log: %s)\n' "$*" "$log"
    # One apt-get at a time: `just test` provisions the Go tools in the background while the
    # foreground may install the image builders, and apt-get fails at once on a held dpkg lock.
    if ! (
        flock 7
        DEBIAN_FRONTEND=noninteractive apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    ) 7>"$BAVS_TOOLS_DIR/.apt.lock" >"$log" 2>&1; then
        printf 'ERROR: apt-get failed; last lines of %s:\n' "$log" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

# ------------------------------------------------------------ processes ----

# bavs_pid_alive PIDFILE PATTERN: prints the PID and succeeds if the process in PIDFILE is alive
# and its command line contains PATTERN (guards against reused PIDs: we never signal a process
# that is not ours).
bavs_pid_alive() {
    local pidfile=$1 pattern=$2 pid cmd
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    pid=${pid//[^0-9]/}
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$pattern"* ]] || return 1
    printf '%s\n' "$pid"
}

# bavs_pid_gone PID: the process has exited (a zombie its parent has not reaped yet counts).
bavs_pid_gone() {
    ! kill -0 "$1" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# bavs_stop_pid NAME PIDFILE PATTERN [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (default 20),
# then SIGKILL. Removes PIDFILE once the process is gone; fails if it is still there.
bavs_stop_pid() {
    local name=$1 pidfile=$2 pattern=$3 timeout=${4:-20} pid i
    if pid=$(bavs_pid_alive "$pidfile" "$pattern"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < timeout * 10; i++)); do
            bavs_pid_gone "$pid" && break
            sleep 0.1
        done
        if ! bavs_pid_gone "$pid"; then
            bavs_warn "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                bavs_pid_gone "$pid" && break
                sleep 0.1
            done
            bavs_pid_gone "$pid" || return 1
        fi
    fi
    rm -f "$pidfile"
}

# bavs_spawn PIDFILE LOGFILE CMD...: start CMD detached (own session, so a Ctrl-C of the caller
# does not reach it; stdin from /dev/null; output appended to LOGFILE) and record its PID: the
# wrapper shell writes its own PID before it execs CMD, so PIDFILE holds CMD's PID. Fails when no
# PID was recorded within 5 s.
bavs_spawn() {
    local pidfile=$1 log=$2 i
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016 # $$ and $0 expand in the child shell
    setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" </dev/null >>"$log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && break
        sleep 0.05
    done
    [[ -s $pidfile ]] || return 1
    bavs_wait_for_exec "$(<"$pidfile")"
}

# ---------------------------------------------------------------- ports ----

# bavs_port_in_use PORT: succeeds if something listens on TCP PORT (any address).
bavs_port_in_use() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# bavs_port_pid PORT: PID of the process listening on PORT (needs ss).
bavs_port_pid() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

# bavs_port_owner PORT: '"name" pid N' of the process listening on PORT, empty when unknown.
bavs_port_owner() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*"\),pid=\([0-9]*\).*/\1 pid \2/p' | head -n 1
}
