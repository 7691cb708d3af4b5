#!/usr/bin/env bash
# Stop the local Kubernetes control plane started by cluster-up.sh. Only the
# processes recorded in the cluster dir's pid files are signalled (and only if
# their command line still points into that dir): SIGTERM, then SIGKILL after a
# timeout. The cluster dir (etcd data, logs, certificates) is kept for
# post-mortem; the next cluster-up wipes it.
# Idempotent: fine when nothing is running or no cluster was ever started.
#
#   bash testing/cluster/cluster-down.sh      (or: just cluster-down)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/cluster/lib.sh
. "$here/lib.sh"

quiet=false
[[ ${1:-} == --quiet ]] && quiet=true
say() { $quiet || bavs_step "$@"; }

bavs_cluster_defaults
bavs_cluster_paths

if [[ ! -d $BAVS_CLUSTER_DIR ]]; then
    say "no cluster in $BAVS_CLUSTER_DIR: nothing to stop"
    exit 0
fi

# The real node first (its pods, containerd), then the control plane, then the node's network
# (the API server listens on it until it exits).
bavs_node_down say

# Clients first, etcd last (reverse start order).
left=()
stopped=0
for ((i = ${#BAVS_COMPONENTS[@]} - 1; i >= 0; i--)); do
    c=${BAVS_COMPONENTS[i]}
    if pid=$(bavs_component_pid "$c"); then
        say "stopping $c (pid $pid)"
        stopped=$((stopped + 1))
        bavs_stop_component "$c" 15 || true
        if bavs_component_pid "$c" >/dev/null; then
            left+=("$c")
            continue
        fi
    fi
    rm -f "$(bavs_pidfile "$c")"
done
((${#left[@]} == 0)) || bavs_die "still running: ${left[*]}"
bavs_node_network_down say

if ((stopped)); then
    say "cluster stopped; data and logs kept in $BAVS_CLUSTER_DIR (wiped by the next cluster-up)"
else
    say "no process of the cluster in $BAVS_CLUSTER_DIR is running: nothing to stop"
fi
