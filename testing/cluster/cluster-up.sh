#!/usr/bin/env bash
# Start a fresh local Kubernetes cluster:
#   etcd, kube-apiserver (RBAC, aggregation layer), kube-controller-manager,
#   kube-scheduler, kwok with fake nodes on which pods go Running/Ready without
#   running anything (the scale suites), and one real node: a kubelet with
#   containerd, runc, CNI and kube-proxy in its own network namespace, on which
#   pods run as containers (see node.sh; BAVS_REAL_NODE=0 leaves it out).
#
#   bash testing/cluster/cluster-up.sh       (or: just cluster-up)
#
# Provisions (builds/caches) the binaries first. Wipes and recreates the
# cluster dir ${BAVS_CLUSTER_DIR:-<repo>/target/cluster}; an old cluster in it is
# stopped first. Writes <cluster>/kubeconfig (admin) and <cluster>/cluster.env
# (KEY=value lines). Ports etc. are overridable by environment variables: see
# bavs_cluster_defaults in lib.sh. Stop it with cluster-down.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/cluster/provision.sh
. "$here/provision.sh"

started=$SECONDS
bavs_cluster_defaults
bavs_cluster_paths

# ---- sanity checks on the configuration -------------------------------------
[[ $BAVS_CLUSTER_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    bavs_die "BAVS_CLUSTER_DIR=$BAVS_CLUSTER_DIR: use a path made of letters, digits and ._/+- only (it goes unquoted into cluster.env)"
[[ $BAVS_CLUSTER_DIR != "$BAVS_REPO_ROOT" && $BAVS_CLUSTER_DIR != / ]] ||
    bavs_die "BAVS_CLUSTER_DIR=$BAVS_CLUSTER_DIR would be wiped: choose a dedicated directory"
PORT_VARS=(BAVS_ETCD_PORT BAVS_ETCD_PEER_PORT BAVS_KUBE_APISERVER_PORT BAVS_KUBE_CONTROLLER_MANAGER_PORT
    BAVS_KUBE_SCHEDULER_PORT BAVS_KWOK_PORT)
for v in "${PORT_VARS[@]}"; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} < 1 || ${!v} > 65535)); then
        bavs_die "$v=${!v} is not a port number"
    fi
done
dups=$(for v in "${PORT_VARS[@]}"; do echo "${!v}"; done | sort | uniq -d)
[[ -z $dups ]] || bavs_die "the same port is configured twice: $dups ($(for v in "${PORT_VARS[@]}"; do printf '%s=%s ' "$v" "${!v}"; done))"
[[ $BAVS_KWOK_NODES =~ ^[0-9]+$ ]] || bavs_die "BAVS_KWOK_NODES=$BAVS_KWOK_NODES is not a number"
[[ $BAVS_KUBE_AGGREGATOR_ROUTING == true || $BAVS_KUBE_AGGREGATOR_ROUTING == false ]] ||
    bavs_die "BAVS_KUBE_AGGREGATOR_ROUTING must be true or false"
[[ $BAVS_REAL_NODE == 0 || $BAVS_REAL_NODE == 1 ]] || bavs_die "BAVS_REAL_NODE must be 0 or 1"
if ((BAVS_REAL_NODE)); then
    [[ $(id -u) == 0 ]] || bavs_die "the real node needs root (network namespace, containerd, kubelet);
       run as root, or BAVS_REAL_NODE=0 for a cluster of kwok nodes only"
fi
APISERVER_IP=$(bavs_apiserver_ip)

# ---- 1. binaries ---------------------------------------------------------------
bavs_step "provisioning binaries"
bavs_cluster_provision | sed 's/^/    /'
if ((BAVS_REAL_NODE)); then
    # The node's own images (pause, CoreDNS) and the services' the end-to-end suite runs; cached
    # after the first run (testing/images/README.md).
    bavs_step "building the real node's images (testing/images/build-images.sh --base-only)"
    BAVS_COREDNS_BIN=$BAVS_COREDNS_DIR/coredns bash "$here/../images/build-images.sh" --base-only | sed 's/^/    /'
    bavs_node_base_images
fi

# ---- 2. stop an old cluster, wipe the dir, check the ports ----------------------
if [[ -d $BAVS_CLUSTER_DIR ]]; then
    bavs_step "stopping the previous cluster in $BAVS_CLUSTER_DIR (if any) and wiping it"
    bash "$here/cluster-down.sh" --quiet
    rm -rf "$BAVS_CLUSTER_DIR"
fi
mkdir -p "$BAVS_CLUSTER_DIR" "$PKI" "$LOGS"
chmod 700 "$BAVS_CLUSTER_DIR" "$PKI"

for v in "${PORT_VARS[@]}"; do
    if bavs_port_in_use "${!v}"; then
        bavs_die "port ${!v} ($v) is already in use by $(bavs_port_owner "${!v}")
       stop what holds it, or pick another port: $v=<port> bash testing/cluster/cluster-up.sh"
    fi
done

# ---- 3. PKI ----------------------------------------------------------------------
# All keys are ECDSA P-256 in PKCS#8 except the service-account key (RSA, the
# most widely supported JWT algorithm). Certificates are valid for 30 days; the
# cluster is recreated by every cluster-up anyway.
bavs_step "generating certificates in $PKI"
APISERVER_SANS="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
APISERVER_SANS+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$APISERVER_IP"
# The first address of the service range is the ClusterIP of Service default/kubernetes.
svc_net=${BAVS_KUBE_SERVICE_CIDR%/*}
APISERVER_SANS+=",IP:${svc_net%.*}.$((${svc_net##*.} + 1))"

bavs__key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# bavs__ca NAME CN
bavs__ca() {
    local name=$1 cn=$2
    bavs__key "$PKI/$name.key"
    openssl req -x509 -new -key "$PKI/$name.key" -subj "/CN=$cn" -days 30 -sha256 \
        -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n') \
        -extensions v3 -out "$PKI/$name.crt" 2>/dev/null
}

# bavs__cert CA NAME SUBJECT USAGE [SANS]   USAGE: serverAuth | clientAuth
bavs__cert() {
    local ca=$1 name=$2 subj=$3 usage=$4 sans=${5:-}
    bavs__key "$PKI/$name.key"
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 -out "$PKI/$name.crt" \
        -extfile <(
            printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n'
            printf 'extendedKeyUsage=%s\nauthorityKeyIdentifier=keyid\n' "$usage"
            [[ -z $sans ]] || printf 'subjectAltName=%s\n' "$sans"
        ) 2>/dev/null
    rm -f "$PKI/$name.csr"
}

(
    set -e
    bavs__ca ca bavs-cluster-ca
    bavs__cert ca kube-apiserver "/CN=kube-apiserver" serverAuth "$APISERVER_SANS"
    bavs__cert ca admin "/O=system:masters/CN=bavs-admin" clientAuth
    bavs__cert ca kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    bavs__cert ca kube-scheduler "/CN=system:kube-scheduler" clientAuth
    bavs__cert ca kwok "/CN=system:kwok-controller" clientAuth
    # Aggregation layer: kube-apiserver authenticates to extension API servers
    # with this client cert; they verify it against front-proxy-ca (published
    # in kube-system/extension-apiserver-authentication).
    bavs__ca front-proxy-ca bavs-front-proxy-ca
    bavs__cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth
    # Service-account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    if ((BAVS_REAL_NODE)); then bavs_node_certs; fi
) || bavs_die "openssl failed to generate the cluster's certificates in $PKI"
chmod 600 "$PKI"/*.key

# bavs__kubeconfig FILE CLIENT: kubeconfig with embedded CA and client cert/key.
bavs__kubeconfig() {
    local file=$1 client=$2
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bavs
  cluster:
    server: https://$APISERVER_IP:$BAVS_KUBE_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $client
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$client.crt")
    client-key-data: $(base64 -w0 "$PKI/$client.key")
contexts:
- name: bavs
  context:
    cluster: bavs
    user: $client
current-context: bavs
EOF
    chmod 600 "$file"
}
bavs__kubeconfig "$KUBECONFIG_ADMIN" admin
for c in kube-controller-manager kube-scheduler kwok; do
    bavs__kubeconfig "$BAVS_CLUSTER_DIR/$c.kubeconfig" "$c"
done
if ((BAVS_REAL_NODE)); then
    bavs__kubeconfig "$BAVS_CLUSTER_DIR/kubelet.kubeconfig" kubelet-client
    bavs__kubeconfig "$BAVS_CLUSTER_DIR/kube-proxy.kubeconfig" kube-proxy
fi

# ---- 4. helpers to start and wait ---------------------------------------------
# bavs_start COMPONENT BINARY ARGS...: run in the background in its own session,
# output to its log file, pid in its pid file (bavs_spawn).
bavs_start() {
    local c=$1 pidf log
    shift
    pidf=$(bavs_pidfile "$c")
    log=$(bavs_logfile "$c")
    bavs_spawn "$pidf" "$log" "$@" || bavs_fail_with_log "$c" "$log" "did not start (no pid file $pidf)"
    bavs_info "$c started (pid $(<"$pidf"), log $log)"
}

# bavs_wait COMPONENT WHAT CHECK...: poll CHECK until it succeeds; fail naming
# the component, with its log, if the process dies or the timeout passes.
bavs_wait() {
    local c=$1 what=$2 deadline=$((SECONDS + BAVS_CLUSTER_TIMEOUT)) t0=$SECONDS
    shift 2
    while :; do
        bavs_component_pid "$c" >/dev/null ||
            bavs_fail_with_log "$c" "$(bavs_logfile "$c")" "exited before it was ready ($what)"
        if "$@" >/dev/null 2>&1; then
            bavs_info "$c ready: $what ($((SECONDS - t0))s)"
            return 0
        fi
        ((SECONDS < deadline)) ||
            bavs_fail_with_log "$c" "$(bavs_logfile "$c")" "not ready after ${BAVS_CLUSTER_TIMEOUT}s ($what)"
        sleep 0.5
    done
}

# bavs_https_ok URL [curl args]: GET URL, expect HTTP 2xx and body "ok".
bavs_https_ok() {
    local url=$1
    shift
    [[ $(curl -fsS --max-time 5 "$@" "$url") == ok ]]
}

kubectl_admin() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# If anything below fails, stop what was started (logs stay for post-mortem).
trap 'rc=$?; if ((rc != 0)); then bash "$here/cluster-down.sh" --quiet || true; fi' EXIT

if ((BAVS_REAL_NODE)); then
    bavs_step "creating the real node's network"
    bavs_node_network_up
fi

# ---- 5. etcd ---------------------------------------------------------------------
bavs_step "starting etcd $ETCD_VERSION on 127.0.0.1:$BAVS_ETCD_PORT"
# --unsafe-no-fsync: a throwaway test cluster on a shared disk; fsync latency
# would only make the API server slow.
bavs_start etcd "$BAVS_ETCD_DIR/etcd" \
    --name bavs \
    --data-dir "$BAVS_CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$BAVS_ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$BAVS_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$BAVS_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$BAVS_ETCD_PEER_PORT" \
    --initial-cluster "bavs=http://127.0.0.1:$BAVS_ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --unsafe-no-fsync \
    --log-level warn
etcd_healthy() { curl -fsS --max-time 5 "http://127.0.0.1:$BAVS_ETCD_PORT/health" | grep -q '"health":"true"'; }
bavs_wait etcd "GET /health" etcd_healthy

# ---- 6. kube-apiserver -------------------------------------------------------------
bavs_step "starting kube-apiserver $K8S_VERSION on https://$APISERVER_IP:$BAVS_KUBE_APISERVER_PORT"
apiserver_node_flags=()
if ((BAVS_REAL_NODE)); then
    # Pods reach the API server through Service default/kubernetes, whose endpoint is the
    # advertise address on the node's veth. The API server reaches the kubelet (logs, exec,
    # port-forward) at its InternalIP, never by a host name this machine's resolver would be
    # asked about, and verifies its serving cert. PodNodeSelector and PodTolerationRestriction
    # let a namespace send its pods to the real node (node.sh).
    apiserver_node_flags=(
        --kubelet-preferred-address-types InternalIP
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority "$PKI/ca.crt"
        --enable-admission-plugins NodeRestriction,PodNodeSelector,PodTolerationRestriction
    )
else
    # --endpoint-reconciler-type none: the API server would publish its advertise
    # address in the endpoints of Service default/kubernetes, and refuses to start
    # when that is a loopback address. Nothing in this cluster can use that Service.
    apiserver_node_flags=(--endpoint-reconciler-type none)
fi
bavs_start kube-apiserver "$BAVS_K8S_DIR/kube-apiserver" \
    --advertise-address "$APISERVER_IP" \
    --bind-address "$APISERVER_IP" \
    "${apiserver_node_flags[@]}" \
    --secure-port "$BAVS_KUBE_APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$BAVS_ETCD_PORT" \
    --tls-cert-file "$PKI/kube-apiserver.crt" \
    --tls-private-key-file "$PKI/kube-apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --service-cluster-ip-range "$BAVS_KUBE_SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-username-headers X-Remote-User \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing="$BAVS_KUBE_AGGREGATOR_ROUTING" \
    --profiling=false
bavs_wait kube-apiserver "GET /readyz" \
    bavs_https_ok "https://$APISERVER_IP:$BAVS_KUBE_APISERVER_PORT/readyz" \
    --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key"

# ---- 7. kube-controller-manager and kube-scheduler --------------------------------
# The default controller set ('*'). Kubernetes 1.37's controller manager has no
# cloud controllers left (they live in cloud-controller-manager), so nothing
# needs to be switched off. The HPA controller syncs every 5 s so that tests see
# scaling quickly.
bavs_step "starting kube-controller-manager and kube-scheduler"
kcm_kubeconfig=$BAVS_CLUSTER_DIR/kube-controller-manager.kubeconfig
bavs_start kube-controller-manager "$BAVS_K8S_DIR/kube-controller-manager" \
    --kubeconfig "$kcm_kubeconfig" \
    --authentication-kubeconfig "$kcm_kubeconfig" \
    --authorization-kubeconfig "$kcm_kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$BAVS_KUBE_CONTROLLER_MANAGER_PORT" \
    --leader-elect=false \
    --controllers '*' \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$BAVS_KUBE_SERVICE_CIDR" \
    --horizontal-pod-autoscaler-sync-period 5s \
    --profiling=false
sched_kubeconfig=$BAVS_CLUSTER_DIR/kube-scheduler.kubeconfig
bavs_start kube-scheduler "$BAVS_K8S_DIR/kube-scheduler" \
    --kubeconfig "$sched_kubeconfig" \
    --authentication-kubeconfig "$sched_kubeconfig" \
    --authorization-kubeconfig "$sched_kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$BAVS_KUBE_SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false
bavs_wait kube-controller-manager "GET /healthz" \
    bavs_https_ok "https://127.0.0.1:$BAVS_KUBE_CONTROLLER_MANAGER_PORT/healthz" -k
bavs_wait kube-scheduler "GET /healthz" \
    bavs_https_ok "https://127.0.0.1:$BAVS_KUBE_SCHEDULER_PORT/healthz" -k

# ---- 8. the real node -------------------------------------------------------------
if ((BAVS_REAL_NODE)); then
    bavs_step "starting the real node $BAVS_NODE_NAME: containerd, kubelet, kube-proxy"
    bavs_node_up
fi

# ---- 9. kwok and its fake nodes ----------------------------------------------------
bavs_step "starting kwok $KWOK_VERSION with $BAVS_KWOK_NODES fake node(s)"
nodes_yaml=$BAVS_CLUSTER_DIR/kwok-nodes.yaml
{
    # kwok updates nodes, node leases and pod status and deletes pods: give it
    # cluster-admin (it is the stand-in for every kubelet of the cluster).
    cat <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: bavs:kwok-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:kwok-controller
EOF
    # Node objects as kwokctl creates them (kustomize/kwokctl/resource/node.yaml
    # of kwok), without taints so that any pod schedules on them.
    for ((i = 0; i < BAVS_KWOK_NODES; i++)); do
        cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
EOF
    done
} >"$nodes_yaml"
kubectl_admin apply -f "$nodes_yaml" >"$(bavs_logfile kubectl-apply-nodes)" 2>&1 ||
    bavs_fail_with_log kubectl "$(bavs_logfile kubectl-apply-nodes)" "could not create the kwok nodes"

# HOME is private: kwok also loads ~/.kwok/kwok.yaml when it exists.
# --node-lease-duration-seconds: kwok's own default is 0 (no node leases), but
# the node-heartbeat-with-lease Stage refreshes node status only every ~10 min
# and relies on leases; without them the node lifecycle controller marks the
# nodes NotReady (and taints them) after its 50 s grace period. kwokctl passes 40.
mkdir -p "$BAVS_CLUSTER_DIR/kwok-home"
HOME=$BAVS_CLUSTER_DIR/kwok-home bavs_start kwok "$BAVS_KWOK_DIR/kwok" \
    --kubeconfig "$BAVS_CLUSTER_DIR/kwok.kubeconfig" \
    --config "$BAVS_KWOK_STAGES" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$BAVS_KWOK_POD_CIDR" \
    --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$BAVS_KWOK_PORT"
kwok_healthy() { curl -fsS --max-time 5 "http://127.0.0.1:$BAVS_KWOK_PORT/healthz" >/dev/null; }
bavs_wait kwok "GET /healthz" kwok_healthy
nodes_ready() {
    local n
    n=$(kubectl_admin get nodes -l type=kwok \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
    ((n == BAVS_KWOK_NODES))
}
bavs_wait kwok "$BAVS_KWOK_NODES node(s) Ready" nodes_ready

# Pods need the namespace's default ServiceAccount (made by the controller
# manager) before they can be created.
default_sa() { kubectl_admin -n default get serviceaccount default; }
bavs_wait kube-controller-manager "ServiceAccount default/default exists" default_sa

# ---- 10. cluster.env --------------------------------------------------------------
CLUSTER_ENV_TMP=$CLUSTER_ENV.tmp
cat >"$CLUSTER_ENV_TMP" <<EOF
# Local Kubernetes control plane of bucket-av-scanner, generated by
# testing/cluster/cluster-up.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). One KEY=value per
# line, no quoting; recreated (with new certificates) by every cluster-up.

BAVS_CLUSTER_DIR=$BAVS_CLUSTER_DIR
# admin kubeconfig (client cert in group system:masters)
BAVS_KUBECONFIG=$KUBECONFIG_ADMIN
BAVS_KUBECTL=$KUBECTL
BAVS_KUBE_APISERVER=https://$APISERVER_IP:$BAVS_KUBE_APISERVER_PORT
BAVS_KUBE_VERSION=$K8S_VERSION
BAVS_ETCD_VERSION=$ETCD_VERSION
BAVS_KWOK_VERSION=$KWOK_VERSION
BAVS_HELM=$BAVS_HELM_DIR/helm
# CA of the API server's serving cert and of all client certs
BAVS_CLUSTER_CA=$PKI/ca.crt
BAVS_CLUSTER_CA_KEY=$PKI/ca.key
# Aggregation layer: CA an extension API server verifies the API server's
# client cert against (CN front-proxy-client), and that client cert itself
BAVS_FRONT_PROXY_CA=$PKI/front-proxy-ca.crt
BAVS_FRONT_PROXY_CLIENT_CERT=$PKI/front-proxy-client.crt
BAVS_FRONT_PROXY_CLIENT_KEY=$PKI/front-proxy-client.key
BAVS_KUBE_AGGREGATOR_ROUTING=$BAVS_KUBE_AGGREGATOR_ROUTING
BAVS_KUBE_SERVICE_CIDR=$BAVS_KUBE_SERVICE_CIDR
BAVS_KWOK_POD_CIDR=$BAVS_KWOK_POD_CIDR
BAVS_KWOK_NODES=$BAVS_KWOK_NODES
BAVS_KWOK_NODE_NAMES=$(for ((i = 0; i < BAVS_KWOK_NODES; i++)); do printf 'kwok-node-%s%s' "$i" "$( ((i + 1 < BAVS_KWOK_NODES)) && echo ,)"; done)

# The real node (BAVS_REAL_NODE=1): its name, network namespace and addresses, and the
# socket of its containerd (images are imported there: ctr --address ... -n k8s.io)
BAVS_REAL_NODE=$BAVS_REAL_NODE
BAVS_NODE_NAME=$( ((BAVS_REAL_NODE)) && echo "$BAVS_NODE_NAME")
BAVS_NODE_NETNS=$( ((BAVS_REAL_NODE)) && echo "$BAVS_NODE_NETNS")
BAVS_NODE_IP=$( ((BAVS_REAL_NODE)) && echo "$BAVS_NODE_IP")
BAVS_NODE_HOST_IP=$( ((BAVS_REAL_NODE)) && echo "$BAVS_NODE_HOST_IP")
BAVS_NODE_POD_CIDR=$( ((BAVS_REAL_NODE)) && echo "$BAVS_NODE_POD_CIDR")
BAVS_CONTAINERD_SOCK=$( ((BAVS_REAL_NODE)) && echo "$CONTAINERD_SOCK")
BAVS_KUBELET_LOG=$( ((BAVS_REAL_NODE)) && bavs_logfile kubelet)
BAVS_CONTAINERD_LOG=$( ((BAVS_REAL_NODE)) && bavs_logfile containerd)
BAVS_KUBE_PROXY_LOG=$( ((BAVS_REAL_NODE)) && bavs_logfile kube-proxy)

# Ports (on 127.0.0.1; the API server's on BAVS_KUBE_APISERVER's address)
BAVS_ETCD_PORT=$BAVS_ETCD_PORT
BAVS_ETCD_PEER_PORT=$BAVS_ETCD_PEER_PORT
BAVS_KUBE_APISERVER_PORT=$BAVS_KUBE_APISERVER_PORT
BAVS_KUBE_CONTROLLER_MANAGER_PORT=$BAVS_KUBE_CONTROLLER_MANAGER_PORT
BAVS_KUBE_SCHEDULER_PORT=$BAVS_KUBE_SCHEDULER_PORT
BAVS_KWOK_PORT=$BAVS_KWOK_PORT
BAVS_ETCD_ENDPOINT=http://127.0.0.1:$BAVS_ETCD_PORT

# Logs
BAVS_ETCD_LOG=$(bavs_logfile etcd)
BAVS_KUBE_APISERVER_LOG=$(bavs_logfile kube-apiserver)
BAVS_KUBE_CONTROLLER_MANAGER_LOG=$(bavs_logfile kube-controller-manager)
BAVS_KUBE_SCHEDULER_LOG=$(bavs_logfile kube-scheduler)
BAVS_KWOK_LOG=$(bavs_logfile kwok)
EOF
chmod 600 "$CLUSTER_ENV_TMP"
mv -f "$CLUSTER_ENV_TMP" "$CLUSTER_ENV"
trap - EXIT

# ---- summary ----------------------------------------------------------------------
bavs_step "cluster up in $((SECONDS - started))s: Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION"
bavs_info "API server:  https://$APISERVER_IP:$BAVS_KUBE_APISERVER_PORT"
bavs_info "kubeconfig:  $KUBECONFIG_ADMIN"
bavs_info "env file:    $CLUSTER_ENV"
bavs_info "try:         $KUBECTL --kubeconfig $KUBECONFIG_ADMIN get nodes"
bavs_info "stop with:   bash testing/cluster/cluster-down.sh"
