#!/usr/bin/env bash
# Build and cache KEDA (its operator and its metrics API server) at a pinned version, with its
# CRDs, under ${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools/keda-<v>/:
#   keda-operator   the ScaledObject controller and gRPC metrics service (cmd/operator)
#   keda-adapter    the external metrics API server the HPAs read (cmd/adapter)
#   crds/           keda.sh CRDs as released (config/crd/bases)
# The KEDA autoscaling suite (operator/tests/keda.rs) runs both against the local control plane.
# Built from the Go module github.com/kedacore/keda/v2 through the Go module proxy. Its go.mod
# has `replace` directives, so `go install module@version` refuses it: the module is downloaded,
# copied out of the read-only module cache and built with its own go.sum (GOWORK=off).
# Idempotent: when the binaries are cached nothing is built. Prints one line.
#
#   bash testing/keda/provision.sh
#
# The tests read the version from the KEDA_VERSION= line below (keep that line's form) and look
# in the same cache. BAVS_GO_BUILD_JOBS=N passes `-p N`. Cold build on a 2-core machine, module
# download included: see README "Testing" for the measured figure.
set -euo pipefail

# shellcheck source=testing/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KEDA_VERSION=v2.21.0
KEDA_MODULE=github.com/kedacore/keda/v2
dir=$BAVS_TOOLS_DIR/keda-$KEDA_VERSION

if [[ -x $dir/keda-operator && -x $dir/keda-adapter && -d $dir/crds ]]; then
    printf '%-16s cached    %s (%s)\n' keda "$KEDA_VERSION" "$dir"
    exit 0
fi
command -v go >/dev/null 2>&1 || bavs_die "'go' is not on PATH; Go >= 1.26 is needed to build KEDA"
mkdir -p "$BAVS_TOOLS_DIR"
# Serialise concurrent runs (two test runs starting at once).
exec 8>"$BAVS_TOOLS_DIR/.keda.lock"
flock 8
if [[ -x $dir/keda-operator && -x $dir/keda-adapter && -d $dir/crds ]]; then
    printf '%-16s built     %s (%s)\n' keda "$KEDA_VERSION" "$dir"
    exit 0
fi
export GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
jobs=()
[[ -n ${BAVS_GO_BUILD_JOBS:-} ]] && jobs=(-p "$BAVS_GO_BUILD_JOBS")
rm -rf "$BAVS_TOOLS_DIR/.keda-$KEDA_VERSION.build."*
tmp=$(mktemp -d "$BAVS_TOOLS_DIR/.keda-$KEDA_VERSION.build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
log=$BAVS_TOOLS_DIR/keda-$KEDA_VERSION.build.log
: >"$log"
printf 'building keda %s with %s (log: %s)\n' "$KEDA_VERSION" "$(go env GOVERSION)" "$log"
start=$SECONDS
# Stamp the version as KEDA's Makefile does (the operator logs it at start).
ldflags="-s -w -X $KEDA_MODULE/version.Version=${KEDA_VERSION#v} -X $KEDA_MODULE/version.GitCommit=$KEDA_VERSION"
# shellcheck disable=SC2317 # run by bavs_logged
build_keda() {
    local source
    source=$(cd "$tmp" && go mod download -json "$KEDA_MODULE@$KEDA_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    [[ -d $source ]] || { echo "go mod download gave no directory for $KEDA_MODULE@$KEDA_VERSION"; return 1; }
    cp -r "$source" "$tmp/src"
    chmod -R u+w "$tmp/src"
    cd "$tmp/src" &&
        nice -n 19 go build -v "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$tmp/keda-operator" ./cmd/operator &&
        nice -n 19 go build -v "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$tmp/keda-adapter" ./cmd/adapter &&
        mkdir -p "$tmp/crds" && cp config/crd/bases/*.yaml "$tmp/crds/"
}
if ! bavs_logged "building keda" "$log" build_keda || ! "$tmp/keda-operator" --help >>"$log" 2>&1; then
    printf 'ERROR: building keda %s failed; last lines of %s:\n' "$KEDA_VERSION" "$log" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
chmod -R u+w "$tmp/src"
rm -rf "$tmp/src"
chmod 755 "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
printf '%-16s built     %s (%s, %ss)\n' keda "$KEDA_VERSION" "$dir" "$((SECONDS - start))"
