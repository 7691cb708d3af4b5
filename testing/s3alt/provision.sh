#!/usr/bin/env bash
# Build and cache the second S3 server at its pinned version: the Versity S3 gateway
# (github.com/versity/versitygw, Apache-2.0), built from its Go module with `go install` into
#   ${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools/versitygw-<v>/bin/versitygw
# Idempotent: when the binary is there nothing is built and a run takes a fraction of a second.
# A cold build (module downloads included) takes ~3.5 min on 2 cores, see README.md; while it
# runs a heartbeat line every 30 s gives the elapsed time and the log.
#
#   bash testing/s3alt/provision.sh
#
# Builds run under `nice -n 19`. BAVS_GO_BUILD_JOBS=N passes `-p N` to go (default: Go's own,
# one job per core).

# shellcheck source=testing/s3alt/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bavs_s3alt_provision() {
    local tmp start ldflags got jobs=()
    if [[ -x $BAVS_VERSITYGW_BIN ]]; then
        printf '%-16s cached    %s (%s)\n' versitygw "$VERSITYGW_VERSION" "$BAVS_VERSITYGW_BIN"
        return 0
    fi
    command -v go >/dev/null 2>&1 ||
        bavs_die "versitygw: 'go' is not on PATH; Go >= 1.25 is needed to build $VERSITYGW_MODULE@$VERSITYGW_VERSION"
    mkdir -p "$BAVS_TOOLS_DIR"
    # Serialise concurrent provisioning (two terminals, parallel test runs).
    exec 7>"$BAVS_TOOLS_DIR/.s3alt-provision.lock"
    flock 7
    if [[ -x $BAVS_VERSITYGW_BIN ]]; then # built by whoever held the lock before us
        printf '%-16s cached    %s (%s)\n' versitygw "$VERSITYGW_VERSION" "$BAVS_VERSITYGW_BIN"
        return 0
    fi
    # Build into a temp dir on the cache's filesystem, then rename: an interrupted build never
    # leaves a partial binary at the final path. Leftovers of a killed build go here (we hold
    # the lock).
    rm -rf "$BAVS_TOOLS_DIR"/.versitygw-*.build.*
    tmp=$(mktemp -d "$BAVS_TOOLS_DIR/.versitygw-$VERSITYGW_VERSION.build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    [[ -n ${BAVS_GO_BUILD_JOBS:-} ]] && jobs=(-p "$BAVS_GO_BUILD_JOBS")
    # Version stamps as upstream's Makefile sets them (main.Version/Build/BuildTime).
    ldflags="-s -w -X main.Version=$VERSITYGW_VERSION -X main.Build=module"
    ldflags+=" -X main.BuildTime=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'building versitygw %s with %s (cold: ~3.5 min on 2 cores; log: %s)\n' \
        "$VERSITYGW_VERSION" "$(go env GOVERSION)" "$BAVS_VERSITYGW_BUILD_LOG"
    start=$SECONDS
    # The module builds as released (go.sum, no replace directives), outside any go.work.
    : >"$BAVS_VERSITYGW_BUILD_LOG"
    if ! (cd "$tmp" && bavs_logged "building versitygw" "$BAVS_VERSITYGW_BUILD_LOG" \
        env GOWORK=off CGO_ENABLED=0 GOBIN="$tmp/bin" nice -n 19 \
        go install -v "${jobs[@]}" -trimpath -ldflags "$ldflags" "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION"); then
        printf 'ERROR: versitygw build failed; last lines of %s:\n' "$BAVS_VERSITYGW_BUILD_LOG" >&2
        tail -n 20 "$BAVS_VERSITYGW_BUILD_LOG" >&2
        exit 1
    fi
    got=$("$tmp/bin/versitygw" --version 2>>"$BAVS_VERSITYGW_BUILD_LOG" | sed -n 's/^Version *: *//p')
    [[ $got == "$VERSITYGW_VERSION" ]] || bavs_die "versitygw built from $VERSITYGW_VERSION reports version '$got'"
    if [[ -e $BAVS_VERSITYGW_DIR ]]; then
        mv "$BAVS_VERSITYGW_DIR" "$tmp.old"
        rm -rf "$tmp.old"
    fi
    chmod 755 "$tmp"
    mv "$tmp" "$BAVS_VERSITYGW_DIR"
    trap - EXIT
    printf '%-16s built     %s (%s, %ss)\n' versitygw "$VERSITYGW_VERSION" "$BAVS_VERSITYGW_BIN" "$((SECONDS - start))"
    flock -u 7
    exec 7>&-
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    bavs_s3alt_provision
fi
