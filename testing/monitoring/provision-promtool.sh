#!/usr/bin/env bash
# Build and cache promtool (the Prometheus project's rule checker and rule unit-test runner) at a
# pinned version, under ${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools/promtool-<v>/promtool.
# The chart's monitoring tests (testing/tests/monitoring.rs) check the rendered PrometheusRule and
# the dashboard's queries with it, so a typo in PromQL fails a test instead of an alert that
# never fires. Built from its Go module (github.com/prometheus/prometheus, cmd/promtool only)
# through the Go module proxy, like the control plane's tools.
# Idempotent: when the binary is cached nothing is built. Prints one line.
#
#   bash testing/monitoring/provision-promtool.sh
#
# The tests read the version from the PROMTOOL_VERSION= line below (keep that line's form) and look
# in the same cache. BAVS_GO_BUILD_JOBS=N passes `-p N`.
# Built with Prometheus' own `remove_all_sd` build tag: promtool then leaves out the service
# discovery plugins (AWS, Azure, GCE, Scaleway, OpenStack, ...; 247 of its 1364 packages), which
# checking and unit-testing rules never use (its Kubernetes discovery stays: promtool imports it
# itself). A cold build (modules cached) took 147 s instead of 320 s on 2 cores, binary 54 MB
# instead of 88 MB (one A/B, 2026-11-30).
set -euo pipefail

# shellcheck source=testing/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PROMTOOL_VERSION=v0.316.0
PROMETHEUS_MODULE=github.com/prometheus/prometheus
dir=$BAVS_TOOLS_DIR/promtool-$PROMTOOL_VERSION

# The cached binary counts only when built with this script's tags (its build information says
# so): a promtool cached before the tags were added is built again once.
built_as_pinned() {
    [[ -x $dir/promtool ]] && go version -m "$dir/promtool" 2>/dev/null | grep -q -- '-tags=remove_all_sd'
}

if built_as_pinned; then
    printf '%-16s cached    %s (%s)\n' promtool "$PROMTOOL_VERSION" "$dir/promtool"
    exit 0
fi
command -v go >/dev/null 2>&1 || bavs_die "'go' is not on PATH; Go >= 1.26 is needed to build promtool"
mkdir -p "$BAVS_TOOLS_DIR"
# Serialise concurrent runs (two test runs starting at once).
exec 8>"$BAVS_TOOLS_DIR/.promtool.lock"
flock 8
if ! built_as_pinned; then
    # Built exactly as released (its go.sum), never as part of a go.work above the repo.
    export GOWORK=off CGO_ENABLED=0
    jobs=()
    [[ -n ${BAVS_GO_BUILD_JOBS:-} ]] && jobs=(-p "$BAVS_GO_BUILD_JOBS")
    rm -rf "$BAVS_TOOLS_DIR/.promtool-$PROMTOOL_VERSION.build."*
    tmp=$(mktemp -d "$BAVS_TOOLS_DIR/.promtool-$PROMTOOL_VERSION.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log=$BAVS_TOOLS_DIR/promtool-$PROMTOOL_VERSION.build.log
    : >"$log"
    printf 'building promtool %s with %s (log: %s)\n' "$PROMTOOL_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # Stamp the version as Prometheus' own build does (promtool --version prints it).
    ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMTOOL_VERSION#v}"
    # shellcheck disable=SC2317 # run by bavs_logged
    build_promtool() {
        cd "$tmp" &&
            GOBIN=$tmp nice -n 19 go install -v "${jobs[@]}" -trimpath -tags remove_all_sd -ldflags "$ldflags" \
                "$PROMETHEUS_MODULE/cmd/promtool@$PROMTOOL_VERSION"
    }
    if ! bavs_logged "building promtool" "$log" build_promtool || ! "$tmp/promtool" --version >>"$log" 2>&1; then
        printf 'ERROR: building promtool %s failed; last lines of %s:\n' "$PROMTOOL_VERSION" "$log" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    chmod 755 "$tmp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    printf '%-16s built     %s (%s, %ss)\n' promtool "$PROMTOOL_VERSION" "$dir/promtool" "$((SECONDS - start))"
    exit 0
fi
printf '%-16s built     %s (%s)\n' promtool "$PROMTOOL_VERSION" "$dir/promtool"
