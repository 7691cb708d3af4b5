#!/usr/bin/env bash
# Smoke-test a running local cluster (started by cluster-up.sh):
#   1. every kwok node is Ready;
#   2. a Deployment of 3 replicas gets 3 pods Running and Ready on kwok nodes;
#   3. discovery (/apis) works and kube-system/extension-apiserver-authentication
#      publishes the request-header CA;
#   4. the aggregation layer end to end: the external-metrics crate's server
#      (its example constant_metrics, serving one metric of constant value) on
#      127.0.0.1 behind an APIService (Service of type ExternalName, localhost)
#      and an autoscaling/v2 HPA with an External metric that scales the
#      Deployment from 3 to 5 replicas. The example is built unless
#      BAVS_CONSTANT_METRICS_BIN names a built one.
# Everything is created in namespace bavs-check and removed afterwards. Step 4
# is skipped when BAVS_KUBE_AGGREGATOR_ROUTING=true or when another
# v1beta1.external.metrics.k8s.io APIService is registered.
#
#   bash testing/cluster/check.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/cluster/lib.sh
. "$here/lib.sh"
bavs_cluster_defaults
bavs_cluster_paths
[[ -s $CLUSTER_ENV ]] || bavs_die "no cluster.env in $BAVS_CLUSTER_DIR: run cluster-up.sh first"
set -a
# shellcheck disable=SC1090
. "$CLUSTER_ENV"
set +a
: "${BAVS_CHECK_ADAPTER_PORT:=36459}"

NS=bavs-check
APISERVICE=v1beta1.external.metrics.k8s.io
work=$BAVS_CLUSTER_DIR/check
k() { "$BAVS_KUBECTL" --kubeconfig "$BAVS_KUBECONFIG" "$@"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}
# wait_for SECONDS WHAT CMD...: poll CMD every 0.5 s.
# On a timeout, the output of `diagnose` (if defined) is shown.
wait_for() {
    local timeout=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            declare -F diagnose >/dev/null && diagnose >&2
            fail "$what (not within ${timeout}s)"
        fi
        sleep 0.5
    done
}

adapter_pid=""
own_apiservice=false
cleanup() {
    [[ -z $adapter_pid ]] || kill "$adapter_pid" 2>/dev/null || true
    if $own_apiservice; then k delete apiservice "$APISERVICE" --ignore-not-found --wait=false >/dev/null 2>&1 || true; fi
    k delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

k delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
k create namespace "$NS" >/dev/null
rm -rf "$work"
mkdir -p "$work"

bavs_step "1. nodes"
nodes_ready() {
    (($(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
        grep -c '^True$') == BAVS_KWOK_NODES))
}
wait_for 30 "$BAVS_KWOK_NODES kwok node(s) Ready" nodes_ready
ok "$BAVS_KWOK_NODES kwok node(s) Ready"

bavs_step "2. deployment with 3 replicas"
t0=$SECONDS
k -n "$NS" create deployment demo --image=example.invalid/x --replicas=3 >/dev/null
k -n "$NS" rollout status deployment/demo --timeout=60s >/dev/null || fail "deployment demo did not become ready"
running=$(k -n "$NS" get pods -l app=demo -o jsonpath='{range .items[*]}{.status.phase} {.spec.nodeName}{"\n"}{end}' |
    grep -c '^Running kwok-node-')
((running == 3)) || fail "expected 3 pods Running on kwok nodes, got $running"
ok "3 pods Running and Ready on kwok nodes in $((SECONDS - t0))s"

bavs_step "3. discovery and the aggregation layer's configuration"
k get --raw /apis | grep -q '"apiregistration.k8s.io"' || fail "GET /apis"
ok "GET /apis"
k -n kube-system get configmap extension-apiserver-authentication -o yaml | grep -q 'requestheader-client-ca-file' ||
    fail "kube-system/extension-apiserver-authentication has no requestheader-client-ca-file"
ok "extension-apiserver-authentication publishes requestheader-client-ca-file"

bavs_step "4. external metrics through an APIService and an HPA"
if [[ $BAVS_KUBE_AGGREGATOR_ROUTING == true ]]; then
    bavs_info "skipped: the cluster runs with --enable-aggregator-routing=true (no loopback backend possible)"
elif k get apiservice "$APISERVICE" >/dev/null 2>&1; then
    bavs_info "skipped: APIService $APISERVICE already exists (one provider per cluster)"
else
    # The aggregator verifies the server against the APIService's caBundle with
    # the name <service>.<namespace>.svc; the server verifies the aggregator's
    # client cert against the front-proxy CA.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/tls.key" 2>/dev/null
    openssl req -new -key "$work/tls.key" -subj "/CN=external-metrics.$NS.svc" -out "$work/tls.csr" 2>/dev/null
    openssl x509 -req -in "$work/tls.csr" -CA "$BAVS_CLUSTER_CA" -CAkey "$BAVS_CLUSTER_CA_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -days 1 -sha256 -out "$work/tls.crt" \
        -extfile <(printf 'subjectAltName=DNS:external-metrics.%s.svc\nextendedKeyUsage=serverAuth\n' "$NS") 2>/dev/null
    if [[ -z ${BAVS_CONSTANT_METRICS_BIN:-} ]]; then
        bavs_info "building the example constant_metrics of bucket-av-external-metrics"
        # The feature set `just test` builds with, so that nothing is built twice.
        (cd "$BAVS_REPO_ROOT" && cargo build --locked -q --workspace --features services --example constant_metrics) ||
            fail "cargo build --example constant_metrics (or set BAVS_CONSTANT_METRICS_BIN to a built one)"
        BAVS_CONSTANT_METRICS_BIN=${CARGO_TARGET_DIR:-$BAVS_REPO_ROOT/target}/debug/examples/constant_metrics
    fi
    # The server reads the aggregator's client CA from kube-system/extension-apiserver-authentication.
    KUBECONFIG=$BAVS_KUBECONFIG "$BAVS_CONSTANT_METRICS_BIN" "127.0.0.1:$BAVS_CHECK_ADAPTER_PORT" \
        "$work/tls.crt" "$work/tls.key" queue_depth=42 >"$work/adapter.log" 2>&1 &
    adapter_pid=$!
    own_apiservice=true
    k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: external-metrics
  namespace: $NS
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $APISERVICE
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service:
    name: external-metrics
    namespace: $NS
    port: $BAVS_CHECK_ADAPTER_PORT
  caBundle: $(base64 -w0 "$BAVS_CLUSTER_CA")
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: demo
  namespace: $NS
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: demo
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: External
    external:
      metric:
        name: queue_depth
      target:
        type: AverageValue
        averageValue: "10"
EOF
    apiservice_available() {
        [[ $(k get apiservice "$APISERVICE" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}') == True ]]
    }
    t0=$SECONDS
    diagnose() {
        k get apiservice "$APISERVICE" -o jsonpath='{.status.conditions[0].message}{"\n"}' || true
        tail -n 5 "$work/adapter.log" || true
    }
    wait_for 60 "APIService $APISERVICE Available" apiservice_available
    ok "APIService $APISERVICE Available in $((SECONDS - t0))s"
    k get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$NS/queue_depth" | grep -q '"value": *"42"' ||
        fail "GET external metric queue_depth through the API server"
    ok "GET /apis/external.metrics.k8s.io/v1beta1/namespaces/$NS/queue_depth = 42 (via the aggregator)"
    scaled() { [[ $(k -n "$NS" get deployment demo -o jsonpath='{.status.readyReplicas}') == 5 ]]; }
    t0=$SECONDS
    diagnose() { k -n "$NS" describe hpa demo | tail -n 8 || true; }
    wait_for 90 "HPA scaled deployment demo to 5 ready replicas" scaled
    ok "HPA scaled demo 3 -> 5 ready replicas (queue_depth 42, target average 10) in $((SECONDS - t0))s"
fi

bavs_step "cluster check passed"
