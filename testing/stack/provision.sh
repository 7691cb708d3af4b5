#!/usr/bin/env bash
# Install and cache the tools of the local test stack at pinned versions:
#   - RabbitMQ and ClamAV (clamd) from Debian 12 packages,
#   - MinIO built from its Go module into a cache dir keyed by version.
# Idempotent: when everything is present nothing is installed or built and a
# run takes a fraction of a second. Prints one line per component.
#
#   bash testing/stack/provision.sh        (or: just provision)
#
# stack-up.sh sources this file (to share the pinned versions) and calls
# bavs_provision itself.

# shellcheck source=testing/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# ---- pinned versions ---------------------------------------------------------
# MinIO has no semver tags (RELEASE.* tags); pin the module pseudo-version of an
# upstream commit. This one is served by the Go module proxy (the older
# RELEASE pseudo-versions are refused there).
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_MODULE=github.com/minio/minio
# Debian 12 (bookworm) upstream versions; the Debian revision may move with
# security updates, a different upstream version only gives a warning.
RABBITMQ_VERSION=3.10.8
CLAMAV_VERSION=1.4.6
# package -> expected upstream version ("" = any)
declare -A BAVS_APT_PINS=(
    [rabbitmq-server]=$RABBITMQ_VERSION
    [clamav-daemon]=$CLAMAV_VERSION
    [clamav]=$CLAMAV_VERSION
    [curl]=""
)
BAVS_APT_ORDER=(rabbitmq-server clamav-daemon clamav curl)
# ------------------------------------------------------------------------------

BAVS_MINIO_BIN="$BAVS_TOOLS_DIR/minio-$MINIO_VERSION/minio"

# "1:3.10.8-1.1+deb12u1" -> "3.10.8-1.1+deb12u1" -> matches pin "3.10.8"
bavs__version_matches() {
    local have=${1#*:} want=$2
    [[ -z $want || $have == "$want" || $have == "$want"[-+~]* ]]
}

bavs__pkg_version() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || return 1
    [[ $status == ii* ]] || return 1
    dpkg-query -W -f='${Version}' "$1"
}

bavs__provision_apt() {
    local pkg ver missing=()
    for pkg in "${BAVS_APT_ORDER[@]}"; do
        bavs__pkg_version "$pkg" >/dev/null || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) || bavs_apt_install "${missing[@]}"

    for pkg in "${BAVS_APT_ORDER[@]}"; do
        ver=$(bavs__pkg_version "$pkg") || { echo "ERROR: $pkg is still not installed" >&2; exit 1; }
        if ! bavs__version_matches "$ver" "${BAVS_APT_PINS[$pkg]}"; then
            printf 'WARNING: %s is %s, the stack was written for %s\n' "$pkg" "$ver" "${BAVS_APT_PINS[$pkg]}" >&2
        fi
        if [[ " ${missing[*]} " == *" $pkg "* ]]; then
            printf '%-16s installed %s\n' "$pkg" "$ver"
        else
            printf '%-16s cached    %s\n' "$pkg" "$ver"
        fi
    done
}

bavs__provision_minio() {
    local dir tmp log start
    dir=$(dirname "$BAVS_MINIO_BIN")
    if [[ -x $BAVS_MINIO_BIN ]]; then
        printf '%-16s cached    %s (%s)\n' minio "$MINIO_VERSION" "$BAVS_MINIO_BIN"
        return 0
    fi
    command -v go >/dev/null 2>&1 || {
        echo "ERROR: minio: 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl) to build $MINIO_MODULE@$MINIO_VERSION" >&2
        exit 1
    }
    mkdir -p "$BAVS_TOOLS_DIR"
    # Build into a temp dir on the same filesystem, then rename: an interrupted
    # build never leaves a partial binary at the final path. Leftovers of a
    # killed build are removed here (we hold the provisioning lock).
    rm -rf "$BAVS_TOOLS_DIR"/.minio-build.*
    tmp=$(mktemp -d "$BAVS_TOOLS_DIR/.minio-build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'; exit 130" INT TERM
    log=$BAVS_TOOLS_DIR/minio-$MINIO_VERSION.build.log
    printf 'building minio %s with %s (takes ~10 min on 2 cores; log: %s)\n' "$MINIO_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    : >"$log"
    if ! bavs_logged "building minio" "$log" env GOBIN="$tmp" CGO_ENABLED=0 go install -v -trimpath "$MINIO_MODULE@$MINIO_VERSION"; then
        printf 'ERROR: minio build failed; last lines of %s:\n' "$log" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    mkdir -p "$dir"
    mv -f "$tmp/minio" "$BAVS_MINIO_BIN"
    rm -rf "$tmp"
    trap - EXIT INT TERM
    printf '%-16s installed %s (%s, built in %ss)\n' minio "$MINIO_VERSION" "$BAVS_MINIO_BIN" "$((SECONDS - start))"
}

bavs_provision() {
    mkdir -p "$BAVS_TOOLS_DIR"
    # Serialise concurrent provisioning (parallel test runs, two terminals).
    exec 8>"$BAVS_TOOLS_DIR/.provision.lock"
    flock 8
    bavs__provision_apt
    bavs__provision_minio
    flock -u 8
    exec 8>&-
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    bavs_provision
fi
