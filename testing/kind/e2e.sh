#!/usr/bin/env bash
# End-to-end check on the kind cluster (`just kind-up kind-images kind-e2e`): installs RabbitMQ and
# MinIO from testing/kind/, the chart with the locally built images, the policy in
# testing/kind/policy.yaml, then uploads a clean file and EICAR from a Job in the cluster and
# waits for the verdict tags (av-status=clean / infected).
#
# Needs docker, kind, kubectl and helm (BAVS_HELM, else helm on PATH), the cluster from
# kind-config.yaml and the images bucket-av-operator:dev and bucket-av-worker:dev loaded into it.
# Written for the CI workflow .github/workflows/kind-e2e.yml; NOT run on the project's own
# machines, which have no Docker.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=testing/output.sh
source "$repo/testing/output.sh"

CONTEXT=${BAVS_KIND_CONTEXT:-kind-bucket-av-scanner}
TAG=${BAVS_KIND_IMAGE_TAG:-dev}
HELM=${BAVS_HELM:-helm}
TIMEOUT=${BAVS_KIND_TIMEOUT:-300s}
MINIO_IMAGE=docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z

k() { kubectl --context "$CONTEXT" "$@"; }
command -v "$HELM" >/dev/null || bavs_die "helm not found: set BAVS_HELM or put helm on PATH"
k get nodes >/dev/null || bavs_die "kind cluster (context $CONTEXT) not reachable: run just kind-up"

dump() {
    bavs_warn "end-to-end check failed; state of the cluster follows"
    k get pods -A -o wide || true
    k get bsp -n media -o yaml || true
    k -n bucket-av-system logs deployment/bucket-av-scanner-operator --tail=100 || true
    k -n media logs deployment/uploads-worker --all-containers --tail=100 || true
}
trap dump ERR

bavs_step "RabbitMQ and MinIO (testing/kind/)"
k apply -f "$here/rabbitmq.yaml"
k -n rabbitmq rollout status deployment/rabbitmq --timeout "$TIMEOUT"
k apply -f "$here/minio.yaml"
k -n minio rollout status deployment/minio --timeout "$TIMEOUT"

bavs_step "the chart (images bucket-av-operator:$TAG, bucket-av-worker:$TAG)"
"$HELM" --kube-context "$CONTEXT" upgrade --install bucket-av-scanner "$repo/charts/bucket-av-scanner" \
    --namespace bucket-av-system --create-namespace \
    --set operator.image.tag="$TAG" --set worker.image.tag="$TAG" \
    --set operator.logFormat=plain \
    --wait --timeout "$TIMEOUT"
k get apiservice v1beta1.external.metrics.k8s.io

# mc (shipped in the MinIO image) as a Job in the cluster: no port-forward, no client on the host.
mc_job() { # NAME SCRIPT
    local pad='              '
    local script="$pad${2//$'\n'/$'\n'$pad}"
    k -n minio delete job "$1" --ignore-not-found >/dev/null
    k apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $1, namespace: minio}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 300
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: mc
          image: $MINIO_IMAGE
          command: [/bin/sh, -ec]
          args:
            - |
              mc alias set e2e http://minio.minio.svc.cluster.local:9000 "\$USER" "\$PASS" >/dev/null
$script
          env:
            - {name: HOME, value: /tmp}
            - name: USER
              valueFrom: {secretKeyRef: {name: minio-root, key: rootUser}}
            - name: PASS
              valueFrom: {secretKeyRef: {name: minio-root, key: rootPassword}}
YAML
    if ! k -n minio wait --for=condition=complete "job/$1" --timeout "$TIMEOUT"; then
        k -n minio logs "job/$1" || true
        bavs_die "job $1 did not complete"
    fi
    k -n minio logs "job/$1"
}

bavs_step "bucket uploads, Secrets, signatures ConfigMap and the policy (namespace media)"
mc_job e2e-setup 'mc mb --ignore-existing e2e/uploads'
k create namespace media --dry-run=client -o yaml | k apply -f -
k -n media create secret generic minio-scanner \
    --from-literal=accessKey=bavs-admin --from-literal=secretKey=bavs-kind-e2e-secret \
    --dry-run=client -o yaml | k apply -f -
k -n media create secret generic rabbitmq-scanner \
    --from-literal=url='amqp://bavs:bavs-kind-e2e@rabbitmq.rabbitmq.svc.cluster.local:5672/%2f' \
    --dry-run=client -o yaml | k apply -f -
k -n media create configmap bavs-test-signatures \
    --from-file="$repo/testing/signatures/bavs-test.hdb" --from-file="$repo/testing/signatures/bavs-test.ndb" \
    --dry-run=client -o yaml | k apply -f -
k apply -f "$here/policy.yaml"
k -n media wait --for=condition=Ready bsp/uploads --timeout "$TIMEOUT"
k -n media get bsp,deployment,hpa

bavs_step "upload a clean file and EICAR; wait for the verdict tags"
mc_job e2e-check "$(cat <<'SH'
printf 'hello, clean world\n' >/tmp/clean.txt
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >/tmp/eicar.com
mc cp -q /tmp/clean.txt e2e/uploads/clean.txt
mc cp -q /tmp/eicar.com e2e/uploads/eicar.com
for i in $(seq 1 120); do
  clean=$(mc tag list --json e2e/uploads/clean.txt 2>/dev/null || true)
  eicar=$(mc tag list --json e2e/uploads/eicar.com 2>/dev/null || true)
  if echo "$clean" | grep -Eq '"av-status": ?"clean"' && echo "$eicar" | grep -Eq '"av-status": ?"infected"'; then
    echo "clean.txt: $clean"
    echo "eicar.com: $eicar"
    exit 0
  fi
  sleep 1
done
echo "no verdict tags after 120 s: clean.txt: $clean eicar.com: $eicar"
exit 1
SH
)"
trap - ERR
bavs_step "end-to-end check passed: clean.txt tagged clean, eicar.com tagged infected"
