#!/usr/bin/env bash
# The real-pod end-to-end suite (testing/tests/real_pods.rs) on the kind cluster of
# kind-config.yaml: the same suite `just test` runs on the local cluster's real node. Only how the
# cluster and the images come to exist differs: here kind made the cluster (`just kind-up`), docker
# built the operator and worker images from their Dockerfiles (`just kind-images`), and RabbitMQ,
# MinIO and ClamAV are the upstream images kind pulls.
#
# Writes target/kind/cluster.env (the kubeconfig of the kind context, kubectl, helm), the file the
# suite reads through BAVS_CLUSTER_ENV, then runs the suite.
#
# Needs docker, kind, kubectl and helm (BAVS_HELM, else helm on PATH). Written for the CI workflow
# .github/workflows/kind-e2e.yml and anyone with Docker; on the project's machines kind does not
# run (see testing/kind/README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=testing/output.sh
source "$repo/testing/output.sh"

CONTEXT=${BAVS_KIND_CONTEXT:-kind-bucket-av-scanner}
CLUSTER=${CONTEXT#kind-}
TAG=${BAVS_KIND_IMAGE_TAG:-dev}
HELM=$(command -v "${BAVS_HELM:-helm}") || bavs_die "helm not found: set BAVS_HELM or put helm on PATH"
KUBECTL=$(command -v kubectl) || bavs_die "kubectl not found on PATH"
command -v kind >/dev/null || bavs_die "kind not found on PATH"

dir=$repo/target/kind
mkdir -p "$dir"
chmod 700 "$dir"
kind get kubeconfig --name "$CLUSTER" >"$dir/kubeconfig" ||
    bavs_die "kind cluster $CLUSTER not found: run just kind-up"
chmod 600 "$dir/kubeconfig"
# The stand-in signature upstream listens on this machine's address on kind's docker network
# (its gateway), which the pods reach.
host_ip=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -m1 -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$') ||
    bavs_die "no IPv4 gateway of docker network kind: the signature upstream needs an address pods reach"
cat >"$dir/cluster.env" <<EOF
# The kind cluster $CLUSTER for testing/tests/real_pods.rs, written by testing/kind/e2e.sh.
BAVS_CLUSTER_DIR=$dir
BAVS_KUBECONFIG=$dir/kubeconfig
BAVS_KUBECTL=$KUBECTL
BAVS_HELM=$HELM
BAVS_NODE_HOST_IP=$host_ip
EOF
cat >"$dir/images.env" <<EOF
BAVS_IMAGE_OPERATOR=bucket-av-operator:$TAG
BAVS_IMAGE_WORKER=bucket-av-worker:$TAG
EOF

bavs_step "the real-pod suite on kind ($CONTEXT, images bucket-av-operator:$TAG, bucket-av-worker:$TAG)"
cd "$repo"
BAVS_CLUSTER_ENV=$dir/cluster.env BAVS_E2E_IMAGES=$dir/images.env \
    cargo test --locked --workspace --features services --test real_pods -- --ignored --nocapture
