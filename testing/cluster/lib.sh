# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this file
# Shared settings and helpers of the local Kubernetes control plane
# (etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok).
# Sourced by provision.sh, cluster-up.sh and cluster-down.sh; not meant to be run.

BAVS_CLUSTER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/lib.sh
source "$BAVS_CLUSTER_SCRIPTS/../lib.sh"

# ---- pinned versions ---------------------------------------------------------
# Kubernetes and etcd are pinned by the wrapper modules next to this file
# (k8s/go.mod, etcd/go.mod, with their go.sum): the versions are read from
# there so that they cannot drift apart. kwok has no replace directives and is
# built with `go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION`.
KWOK_VERSION=v0.8.0
KWOK_MODULE=sigs.k8s.io/kwok

# The module proxy does not say which git commit a release tag points at; the
# binaries report this value as gitCommit (empty = unknown; set it when known).
K8S_GIT_COMMIT=""
# ------------------------------------------------------------------------------

# shellcheck source=testing/cluster/node.sh
source "$BAVS_CLUSTER_SCRIPTS/node.sh"

bavs__gomod_require() { # FILE MODULE -> version
    awk -v m="$2" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$1"
}

K8S_VERSION=$(bavs__gomod_require "$BAVS_CLUSTER_SCRIPTS/k8s/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(bavs__gomod_require "$BAVS_CLUSTER_SCRIPTS/etcd/go.mod" go.etcd.io/etcd/server/v3)

BAVS_K8S_DIR="$BAVS_TOOLS_DIR/kubernetes-$K8S_VERSION"
BAVS_ETCD_DIR="$BAVS_TOOLS_DIR/etcd-$ETCD_VERSION"
BAVS_KWOK_DIR="$BAVS_TOOLS_DIR/kwok-$KWOK_VERSION"
# kubelet and kube-proxy run the real node (node-up.sh); one `go build` makes all six.
BAVS_K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
# kwok's default Stages (node-initialize, node-heartbeat-with-lease, pod-ready,
# pod-complete, pod-delete), copied from the kwok module at build time.
BAVS_KWOK_STAGES="$BAVS_KWOK_DIR/stages.yaml"

# ---------------------------------------------------------------- output ----

bavs_fail_hint() { printf 'cluster-up stops what it started; logs stay in %s' "${BAVS_CLUSTER_DIR:-}"; }

# ------------------------------------------------------------- config ----

BAVS_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# Defaults for a new cluster; each is overridable from the environment of
# cluster-up.sh and then frozen into cluster.env.
bavs_cluster_defaults() {
    : "${BAVS_CLUSTER_DIR:=$BAVS_REPO_ROOT/target/cluster}"
    # Below Linux's ephemeral range (32768-60999), as the stack's: see testing/stack/lib.sh.
    : "${BAVS_ETCD_PORT:=22379}"
    : "${BAVS_ETCD_PEER_PORT:=22380}"
    : "${BAVS_KUBE_APISERVER_PORT:=26443}"
    : "${BAVS_KUBE_CONTROLLER_MANAGER_PORT:=26444}"
    : "${BAVS_KUBE_SCHEDULER_PORT:=26445}"
    : "${BAVS_KWOK_PORT:=26450}"
    : "${BAVS_KWOK_NODES:=2}"
    # Service ClusterIPs exist only in the API: nothing routes them.
    : "${BAVS_KUBE_SERVICE_CIDR:=10.96.0.0/16}"
    # Fake pod IPs handed out by kwok (never routed either).
    : "${BAVS_KWOK_POD_CIDR:=10.244.0.0/16}"
    # kube-apiserver --enable-aggregator-routing. Off by default: with it on, the
    # API server sends aggregated-API (and webhook) traffic to EndpointSlice
    # addresses, which may never be loopback, so nothing on this machine could
    # serve an APIService. With it off, an APIService whose Service is of type
    # ExternalName (externalName: localhost) reaches a server on 127.0.0.1
    # (see README.md, "Aggregated APIs").
    : "${BAVS_KUBE_AGGREGATOR_ROUTING:=false}"
    # seconds to wait for each component to become ready
    : "${BAVS_CLUSTER_TIMEOUT:=90}"
    # Debian's containernetworking-plugins install here (not in /opt/cni/bin).
    : "${BAVS_CNI_BIN_DIR:=/usr/lib/cni}"
    bavs_node_defaults
    if [[ $BAVS_CLUSTER_DIR != /* ]]; then
        BAVS_CLUSTER_DIR="$PWD/$BAVS_CLUSTER_DIR"
    fi
}

# Derived paths inside the cluster dir.
bavs_cluster_paths() {
    CLUSTER_ENV=$BAVS_CLUSTER_DIR/cluster.env
    PKI=$BAVS_CLUSTER_DIR/pki
    LOGS=$BAVS_CLUSTER_DIR/logs
    KUBECONFIG_ADMIN=$BAVS_CLUSTER_DIR/kubeconfig
    KUBECTL=$BAVS_K8S_DIR/kubectl
}

bavs_pidfile() { printf '%s/%s.pid\n' "$BAVS_CLUSTER_DIR" "$1"; }
bavs_logfile() { printf '%s/%s.log\n' "$LOGS" "$1"; }

# bavs_component_pid COMPONENT: print the pid of a running component of THIS
# cluster (pid file present, process alive and its command line mentions the
# cluster dir, so a recycled pid is never taken for ours); fail otherwise.
bavs_component_pid() { bavs_pid_alive "$(bavs_pidfile "$1")" "$BAVS_CLUSTER_DIR/"; }

# bavs_stop_component COMPONENT [TIMEOUT]: SIGTERM, then SIGKILL after TIMEOUT s;
# fails when the process is still there.
bavs_stop_component() { bavs_stop_pid "$1" "$(bavs_pidfile "$1")" "$BAVS_CLUSTER_DIR/" "${2:-15}"; }
