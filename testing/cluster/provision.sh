#!/usr/bin/env bash
# Build and cache the binaries of the local Kubernetes control plane at pinned
# versions, under ${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools/:
#   kubernetes-<v>/  kube-apiserver kube-controller-manager kube-scheduler kubectl
#                    kubelet kube-proxy
#                    (k8s.io/kubernetes through the wrapper module k8s/)
#   etcd-<v>/etcd    (go.etcd.io/etcd/server/v3 through the wrapper module etcd/)
#   kwok-<v>/kwok    (go install sigs.k8s.io/kwok/cmd/kwok@<v>) and stages.yaml
#   helm-<v>/helm    (go install helm.sh/helm/v3/cmd/helm@<v>), for the chart's tests
#   coredns-<v>/coredns (the wrapper module coredns/: cluster DNS for the real node)
# Idempotent: when everything is cached nothing is built and a run takes well
# under a second. Prints one line per component.
#
#   bash testing/cluster/provision.sh
#
# Builds run under `nice -n 19`. BAVS_GO_BUILD_JOBS=N passes `-p N` to go
# (default: Go's own, one job per core). A cold build takes ~30 min on 2 cores
# (37 min measured on a busy machine), see README.md.

# shellcheck source=testing/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=testing/cluster/coredns.sh
source "$BAVS_CLUSTER_SCRIPTS/coredns.sh"

# Helm, for charts/bucket-av-scanner and its tests (testing/tests/helm_chart.rs).
# v3: the version most platform teams run; the chart (apiVersion v2) installs
# with Helm 4 as well. Its module has no replace directives, so `go install`
# builds it as released. cluster-up.sh writes the path into cluster.env as
# BAVS_HELM.
HELM_VERSION=v3.22.0
HELM_MODULE=helm.sh/helm/v3
BAVS_HELM_DIR="$BAVS_TOOLS_DIR/helm-$HELM_VERSION"

bavs__go_env() {
    command -v go >/dev/null 2>&1 || bavs_die "'go' is not on PATH; Go >= 1.26 is needed to build the control plane"
    # The wrapper modules are built exactly as committed (go.sum), never as
    # part of a go.work that may exist above the repo.
    export GOWORK=off CGO_ENABLED=0
    BAVS_GO_JOBS=()
    [[ -n ${BAVS_GO_BUILD_JOBS:-} ]] && BAVS_GO_JOBS=(-p "$BAVS_GO_BUILD_JOBS")
    return 0
}

# bavs__tmpdir NAME: a fresh build dir on the cache's filesystem (so that the
# final `mv` is an atomic rename); leftovers of killed builds are removed here
# (we hold the provisioning lock).
bavs__tmpdir() {
    rm -rf "$BAVS_TOOLS_DIR/.$1.build."*
    mktemp -d "$BAVS_TOOLS_DIR/.$1.build.XXXXXX"
}

# bavs__install_dir TMP FINAL: replace FINAL by TMP in one rename.
bavs__install_dir() {
    local tmp=$1 final=$2
    if [[ -e $final ]]; then
        mv "$final" "$tmp.old"
        rm -rf "$tmp.old"
    fi
    chmod 755 "$tmp"
    mv "$tmp" "$final"
}

bavs__build_failed() { # NAME LOG
    printf 'ERROR: %s build failed; last lines of %s:\n' "$1" "$2" >&2
    tail -n 20 "$2" >&2
    exit 1
}

bavs__provision_k8s() {
    local b complete=1 tmp log start ldflags pkg
    for b in "${BAVS_K8S_BINARIES[@]}"; do
        [[ -x $BAVS_K8S_DIR/$b ]] || complete=0
    done
    if ((complete)); then
        for b in "${BAVS_K8S_BINARIES[@]}"; do
            printf '%-24s cached  %s (%s)\n' "$b" "$K8S_VERSION" "$BAVS_K8S_DIR/$b"
        done
        return 0
    fi
    bavs__go_env
    tmp=$(bavs__tmpdir "kubernetes-$K8S_VERSION")
    log=$BAVS_TOOLS_DIR/kubernetes-$K8S_VERSION.build.log
    # Version stamps as upstream's hack/lib/version.sh sets them; without them
    # every binary reports v0.0.0-master.
    local major minor
    major=${K8S_VERSION#v}
    major=${major%%.*}
    minor=${K8S_VERSION#v*.}
    minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitCommit=$K8S_GIT_COMMIT -X $pkg.gitTreeState=archive"
        ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    printf 'building kubernetes %s (%s) with %s (cold: ~30 min on 2 cores; log: %s)\n' \
        "$K8S_VERSION" "${BAVS_K8S_BINARIES[*]}" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # shellcheck disable=SC2317 # run by bavs_logged
    bavs__build_step() {
        cd "$BAVS_CLUSTER_SCRIPTS/k8s" &&
            nice -n 19 go build -v "${BAVS_GO_JOBS[@]}" -trimpath -tags selinux,notest -ldflags "$ldflags" \
                -o "$tmp/" "${BAVS_K8S_BINARIES[@]/#/k8s.io/kubernetes/cmd/}"
    }
    : >"$log"
    bavs_logged "building kubernetes" "$log" bavs__build_step || bavs__build_failed kubernetes "$log"
    local got
    got=$("$tmp/kubectl" version --client -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -n1)
    [[ $got == "$K8S_VERSION" ]] || bavs_die "kubectl built from $K8S_VERSION reports version '$got'"
    bavs__install_dir "$tmp" "$BAVS_K8S_DIR"
    for b in "${BAVS_K8S_BINARIES[@]}"; do
        printf '%-24s built   %s (%s)\n' "$b" "$K8S_VERSION" "$BAVS_K8S_DIR/$b"
    done
    printf '%-24s         built in %ss\n' kubernetes "$((SECONDS - start))"
}

bavs__provision_etcd() {
    local tmp log start
    if [[ -x $BAVS_ETCD_DIR/etcd ]]; then
        printf '%-24s cached  %s (%s)\n' etcd "$ETCD_VERSION" "$BAVS_ETCD_DIR/etcd"
        return 0
    fi
    bavs__go_env
    tmp=$(bavs__tmpdir "etcd-$ETCD_VERSION")
    log=$BAVS_TOOLS_DIR/etcd-$ETCD_VERSION.build.log
    printf 'building etcd %s with %s (log: %s)\n' "$ETCD_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # shellcheck disable=SC2317 # run by bavs_logged
    bavs__build_step() {
        cd "$BAVS_CLUSTER_SCRIPTS/etcd" &&
            nice -n 19 go build -v "${BAVS_GO_JOBS[@]}" -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
    }
    : >"$log"
    bavs_logged "building etcd" "$log" bavs__build_step || bavs__build_failed etcd "$log"
    "$tmp/etcd" --version >>"$log" 2>&1 || bavs__build_failed etcd "$log"
    bavs__install_dir "$tmp" "$BAVS_ETCD_DIR"
    printf '%-24s built   %s (%s, %ss)\n' etcd "$ETCD_VERSION" "$BAVS_ETCD_DIR/etcd" "$((SECONDS - start))"
}

bavs__provision_kwok() {
    local tmp log start src s
    if [[ -x $BAVS_KWOK_DIR/kwok && -s $BAVS_KWOK_STAGES ]]; then
        printf '%-24s cached  %s (%s)\n' kwok "$KWOK_VERSION" "$BAVS_KWOK_DIR/kwok"
        return 0
    fi
    bavs__go_env
    tmp=$(bavs__tmpdir "kwok-$KWOK_VERSION")
    log=$BAVS_TOOLS_DIR/kwok-$KWOK_VERSION.build.log
    printf 'building kwok %s with %s (log: %s)\n' "$KWOK_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # shellcheck disable=SC2317 # run by bavs_logged
    bavs__build_step() {
        cd "$tmp" &&
            GOBIN=$tmp nice -n 19 go install -v "${BAVS_GO_JOBS[@]}" -trimpath -ldflags "-s -w" "$KWOK_MODULE/cmd/kwok@$KWOK_VERSION"
    }
    : >"$log"
    bavs_logged "building kwok" "$log" bavs__build_step || bavs__build_failed kwok "$log"
    # kwok ships its default Stages as YAML in the module (kustomize/stage/...);
    # kwokctl passes the same set to kwok (node-initialize, node heartbeat with
    # lease, pod-ready, pod-complete, pod-delete). Keep them with the binary.
    src=$(cd "$tmp" && go mod download -json "$KWOK_MODULE@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [[ -d $src/kustomize/stage ]] || bavs_die "kwok: no kustomize/stage in the module source ($src)"
    {
        printf '# Default kwok Stages, copied from %s@%s kustomize/stage/.\n' "$KWOK_MODULE" "$KWOK_VERSION"
        for s in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
            pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            printf -- '---\n'
            cat "$src/kustomize/stage/$s"
        done
    } >"$tmp/stages.yaml"
    bavs__install_dir "$tmp" "$BAVS_KWOK_DIR"
    printf '%-24s built   %s (%s, %ss)\n' kwok "$KWOK_VERSION" "$BAVS_KWOK_DIR/kwok" "$((SECONDS - start))"
}

bavs__provision_helm() {
    local tmp log start src client_go k8s_minor ldflags got pkg
    if [[ -x $BAVS_HELM_DIR/helm ]]; then
        printf '%-24s cached  %s (%s)\n' helm "$HELM_VERSION" "$BAVS_HELM_DIR/helm"
        return 0
    fi
    bavs__go_env
    tmp=$(bavs__tmpdir "helm-$HELM_VERSION")
    log=$BAVS_TOOLS_DIR/helm-$HELM_VERSION.build.log
    printf 'building helm %s with %s (cold: ~5 min on 2 cores; log: %s)\n' "$HELM_VERSION" "$(go env GOVERSION)" "$log"
    start=$SECONDS
    # Stamp the version as helm's Makefile does, and the Kubernetes version that
    # `helm template`/`helm lint` assume without a cluster (Capabilities.KubeVersion,
    # deprecation checks): 1.<client-go minor>, e.g. client-go v0.37.0 -> 1.37.
    src=$(cd "$tmp" && go mod download -json "$HELM_MODULE@$HELM_VERSION" 2>>"$log" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') ||
        bavs__build_failed helm "$log"
    [[ -f $src/go.mod ]] || bavs__build_failed helm "$log"
    client_go=$(bavs__gomod_require "$src/go.mod" k8s.io/client-go)
    k8s_minor=${client_go#v0.}
    k8s_minor=${k8s_minor%%.*}
    [[ $k8s_minor =~ ^[0-9]+$ ]] || bavs_die "helm: cannot read the client-go version from $src/go.mod ('$client_go')"
    ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION"
    ldflags+=" -X $HELM_MODULE/internal/version.gitTreeState=clean"
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X $HELM_MODULE/$pkg.k8sVersionMajor=1 -X $HELM_MODULE/$pkg.k8sVersionMinor=$k8s_minor"
    done
    # shellcheck disable=SC2317 # run by bavs_logged
    bavs__build_step() {
        cd "$tmp" &&
            GOBIN=$tmp nice -n 19 go install -v "${BAVS_GO_JOBS[@]}" -trimpath -ldflags "$ldflags" "$HELM_MODULE/cmd/helm@$HELM_VERSION"
    }
    bavs_logged "building helm" "$log" bavs__build_step || bavs__build_failed helm "$log"
    got=$("$tmp/helm" version --template '{{.Version}}' 2>>"$log") || bavs__build_failed helm "$log"
    [[ $got == "$HELM_VERSION" ]] || bavs_die "helm built from $HELM_VERSION reports version '$got'"
    bavs__install_dir "$tmp" "$BAVS_HELM_DIR"
    printf '%-24s built   %s (%s, %ss)\n' helm "$HELM_VERSION" "$BAVS_HELM_DIR/helm" "$((SECONDS - start))"
}

# openssl makes the cluster's certificates, curl probes health endpoints. The real node
# runs Debian's containerd (1.6: it serves the CRI v1 the 1.37 kubelet needs), runc and CNI
# plugins; kube-proxy's nftables mode runs `nft`, the kubelet `iptables`.
bavs__provision_apt() {
    local missing=() c
    for c in openssl:openssl curl:curl containerd:containerd runc:runc nft:nftables iptables:iptables; do
        command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
    done
    [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
    ((${#missing[@]} == 0)) || bavs_apt_install "${missing[@]}"
}

bavs_cluster_provision() {
    [[ -n $K8S_VERSION && -n $ETCD_VERSION ]] || bavs_die "cannot read the pinned versions from $BAVS_CLUSTER_SCRIPTS/{k8s,etcd}/go.mod"
    mkdir -p "$BAVS_TOOLS_DIR"
    # Serialise concurrent provisioning (parallel test runs, two terminals).
    exec 9>"$BAVS_TOOLS_DIR/.cluster-provision.lock"
    flock 9
    trap 'rm -rf "$BAVS_TOOLS_DIR"/.{kubernetes,etcd,kwok,helm,coredns}-*.build.*' EXIT
    trap 'exit 130' INT TERM
    bavs__provision_apt
    bavs__provision_etcd
    bavs__provision_kwok
    bavs__provision_k8s
    bavs__provision_helm
    bavs__provision_coredns
    trap - EXIT INT TERM
    flock -u 9
    exec 9>&-
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    bavs_cluster_provision
fi
