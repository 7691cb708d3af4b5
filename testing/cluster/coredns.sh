# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this file
# CoreDNS for the local cluster's real node: built from the wrapper module
# coredns/ (github.com/coredns/coredns with only the plugins listed in
# coredns/main.go, no forward plugin) and cached under
#   ${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools/coredns-<v>/coredns
# Sourced by provision.sh after lib.sh (uses its bavs__go_env, bavs__tmpdir,
# bavs__install_dir, bavs__build_failed); not meant to be run. See coredns.md.
#
# manifests/coredns.yaml runs it in kube-system; bavs_coredns_manifest prints
# that manifest with the image filled in:
#   bavs_coredns_manifest | "$BAVS_KUBECTL" --kubeconfig "$BAVS_KUBECONFIG" apply -f -

# Pinned by coredns/go.mod (and go.sum); read from there so the two cannot drift.
COREDNS_VERSION=$(bavs__gomod_require "$BAVS_CLUSTER_SCRIPTS/coredns/go.mod" github.com/coredns/coredns)
BAVS_COREDNS_DIR="$BAVS_TOOLS_DIR/coredns-$COREDNS_VERSION"
# The image the manifest runs (imagePullPolicy Never: it must already be in the
# node's containerd): testing/images/build-images.sh with BAVS_COREDNS_BIN set to
# this binary puts it in as /coredns and tags it with `coredns -version`'s
# number, without the v (1.15.0).
BAVS_COREDNS_IMAGE="localhost/bavs/coredns:${COREDNS_VERSION#v}"
BAVS_COREDNS_MANIFEST="$BAVS_CLUSTER_SCRIPTS/manifests/coredns.yaml"

bavs__provision_coredns() {
    local tmp log start got plugins
    [[ -n $COREDNS_VERSION ]] || bavs_die "cannot read the pinned CoreDNS version from $BAVS_CLUSTER_SCRIPTS/coredns/go.mod"
    if [[ -x $BAVS_COREDNS_DIR/coredns ]]; then
        printf '%-24s cached  %s (%s)\n' coredns "$COREDNS_VERSION" "$BAVS_COREDNS_DIR/coredns"
        return 0
    fi
    bavs__go_env
    tmp=$(bavs__tmpdir "coredns-$COREDNS_VERSION")
    log=$BAVS_TOOLS_DIR/coredns-$COREDNS_VERSION.build.log
    printf 'building coredns %s with %s (cold: 6-20 min on 2 cores; log: %s)\n' "$COREDNS_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # coremain.CoreVersion is a constant of the release, so no version stamp is
    # needed; GitCommit stays empty (the module proxy does not tell the commit).
    # shellcheck disable=SC2317 # run by bavs_logged
    bavs__build_step() {
        cd "$BAVS_CLUSTER_SCRIPTS/coredns" &&
            nice -n 19 go build -v "${BAVS_GO_JOBS[@]}" -trimpath -ldflags "-s -w" -o "$tmp/coredns" .
    }
    : >"$log"
    bavs_logged "building coredns" "$log" bavs__build_step || bavs__build_failed coredns "$log"
    got=$("$tmp/coredns" -version 2>>"$log" | sed -n 's/^CoreDNS-//p') || bavs__build_failed coredns "$log"
    [[ v$got == "$COREDNS_VERSION" ]] || bavs_die "coredns built from $COREDNS_VERSION reports version '$got'"
    # The point of this build: no plugin in it can send a query upstream.
    plugins=$("$tmp/coredns" -plugins 2>>"$log") || bavs__build_failed coredns "$log"
    printf 'plugins: %s\n' "$(printf '%s' "$plugins" | tr -s '\n' ' ')" >>"$log"
    if grep -qxE 'forward|grpc' <<<"$plugins"; then
        bavs_die "coredns $COREDNS_VERSION was built with a forwarding plugin (see $log); check coredns/main.go"
    fi
    bavs__install_dir "$tmp" "$BAVS_COREDNS_DIR"
    printf '%-24s built   %s (%s, %ss)\n' coredns "$COREDNS_VERSION" "$BAVS_COREDNS_DIR/coredns" "$((SECONDS - start))"
}

# bavs_coredns_manifest: manifests/coredns.yaml with its one placeholder,
# ${BAVS_COREDNS_IMAGE}, replaced (by sed: envsubst would also touch any other
# $ in the Corefile); fails if a placeholder is left.
bavs_coredns_manifest() {
    local out
    out=$(sed "s|\${BAVS_COREDNS_IMAGE}|$BAVS_COREDNS_IMAGE|g" "$BAVS_COREDNS_MANIFEST") || return 1
    if [[ $out == *"\${"* ]]; then
        bavs_die "unreplaced placeholder left in $BAVS_COREDNS_MANIFEST"
    fi
    printf '%s\n' "$out"
}
