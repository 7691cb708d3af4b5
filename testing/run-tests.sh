#!/usr/bin/env bash
# Runs every check and test of the project against a fresh real stack, then stops the stack,
# also when a test fails. `just test` calls this; so does CI (through `just test`).
# Every cargo command has the same --workspace --features services: the feature turns on the test
# suites that need the stack or the control plane, and one feature set means nothing is built
# twice (stack-up.sh builds the binaries it runs with it too).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

# One build from scratch, not an edit loop: incremental compilation would only add its caches
# (gigabytes for ~40 test binaries) to a disk that CI shares. Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# What to undo on exit, in reverse order, also when a step fails.
cleanups=()
on_exit() {
    local i
    for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
}
trap on_exit EXIT

# The pinned Go tools (MinIO, Kubernetes, etcd, kwok, helm, CoreDNS, the Versity gateway,
# promtool, KEDA) are cached as binaries by version, so Go's build cache is of no use once they are
# built; a cold build leaves gigabytes of it. This run's builds share a scratch cache, removed once
# the last tool is built (and on exit). Set GOCACHE to keep yours.
if [[ -z ${GOCACHE:-} ]]; then
    mkdir -p "${XDG_CACHE_HOME:-$HOME/.cache}"
    GOCACHE=$(mktemp -d "${XDG_CACHE_HOME:-$HOME/.cache}/bucket-av-go-build.XXXXXX")
    export GOCACHE
    cleanups+=('rm -rf "$GOCACHE"')
fi

# The pinned Go tools build in the background while cargo builds in the foreground, so no core
# idles through cargo's serial phases (the largest crates, links) and the Go module downloads
# overlap with compiling. They run in a session of their own (one process group, stopped as one
# when a step fails), which the kernel's autogroup scheduling gives the same share of the cores as
# the foreground (`nice` weighs only within a session): both progress. Their output goes to a
# log, shown when the run waits for them.
target_dir=${CARGO_TARGET_DIR:-$repo/target}
mkdir -p "$target_dir"
go_tools_log=$target_dir/go-tools.log
step "Building the pinned Go tools in the background (log: $go_tools_log)"
setsid nice -n 19 bash -c '
    set -euo pipefail
    bash testing/stack/provision.sh
    bash testing/cluster/provision.sh
    bash testing/s3alt/provision.sh
    bash testing/monitoring/provision-promtool.sh
    bash testing/keda/provision.sh
' >"$go_tools_log" 2>&1 &
go_tools_pid=$!
# On exit (a failed step): stop the builds, their own process group.
cleanups+=('kill -TERM -- "-$go_tools_pid" 2>/dev/null')
wait_for_go_tools() {
    step "Waiting for the pinned Go tools (MinIO, Kubernetes, etcd, kwok, helm, CoreDNS, the Versity gateway, promtool, KEDA)"
    tail -n +1 -f --pid="$go_tools_pid" "$go_tools_log"
    wait "$go_tools_pid" || { printf 'ERROR: building the Go tools failed (log above: %s)\n' "$go_tools_log" >&2; exit 1; }
}

step "Formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features services -- -D warnings

step "Building the tests and the binaries they run"
# One build of every target with one feature set: `--bins` alone would resolve the features
# without the dev-dependencies and rebuild tokio, kube and what depends on them a second time.
cargo build --workspace --locked --features services --all-targets
cargo test --workspace --locked --features services --no-run

step "Building the release binaries and the container images from the Dockerfiles (testing/images/)"
# The images package what users get: release builds, through the Dockerfiles' runtime stage.
cargo build --release --locked -p bucket-av-worker -p bucket-av-operator --bins
bash testing/images/build-images.sh

step "Installing the reference Standard Webhooks verifier (PyPI standardwebhooks, pinned) the webhook tests check with"
bash testing/webhook-verifier/provision.sh

wait_for_go_tools

step "Starting the real stack (RabbitMQ, MinIO, clamd)"
# The binaries stack-up.sh runs are built above; built again with --bin alone, their features
# would differ and cargo would rebuild part of the dependency tree.
BAVS_OPERATOR_BIN=$target_dir/debug/bucket-av-operator BAVS_STACK_PROBE_BIN=$target_dir/debug/stack-probe \
    bash testing/stack/stack-up.sh
cleanups+=('step "Stopping the stack"; bash testing/stack/stack-down.sh')

step "Starting the second S3 store (the Versity S3 gateway: not MinIO, no bucket notifications)"
bash testing/s3alt/up.sh
cleanups+=('step "Stopping the second store"; bash testing/s3alt/down.sh')

step "Starting the local cluster (etcd, kube-apiserver, controller manager, scheduler, kwok, the real node)"
bash testing/cluster/cluster-up.sh
cleanups+=('step "Stopping the control plane"; bash testing/cluster/cluster-down.sh')
# Every Go tool is built by now (the real node's images took the Kubernetes module's pause.c).
[[ ${GOCACHE:-} != */bucket-av-go-build.* ]] || rm -rf "$GOCACHE"

step "Running every test (unit, then integration against the stack)"
# Integration tests spend their time waiting on services, so more run at once than there are
# cores. Test binaries run one after another, which keeps the clamd outage suite on its own.
WORKER_LOG=${WORKER_LOG:-warn} cargo test --workspace --locked --features services -- --test-threads "${TEST_THREADS:-6}"

step "Suites that stop or restart the stack's services, on their own: admin API, managed targets, reconcile faults"
# --workspace keeps the feature set of the build above: with -p, cargo would rebuild half the
# dependency tree for a narrower one.
BAVS_ALLOW_MINIO_RESTART=1 cargo test --workspace --locked --features services \
    --test restart --test managed_target --test reconcile_faults -- --ignored --test-threads 1

step "Fault injection: 2000 uploads while every part of the system fails in turn, in each event delivery mode (reports printed)"
WORKER_LOG=${WORKER_LOG:-warn} OPERATOR_LOG=${OPERATOR_LOG:-warn} \
    cargo test --workspace --locked --features services --test fault_injection -- --ignored --nocapture --test-threads 1

step "The system as real pods on the real node: chart, operator, workers with the clamd sidecar (its report is printed)"
BAVS_CONTAINERD_SOCK=$(sed -n 's/^BAVS_CONTAINERD_SOCK=//p' target/cluster/cluster.env)
bash testing/images/load-images.sh --address "$BAVS_CONTAINERD_SOCK"
BAVS_E2E_IMAGES=$repo/target/images/images.env \
    cargo test --workspace --locked --features services --test real_pods -- --ignored --nocapture
