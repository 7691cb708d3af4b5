# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this file
# The real node of the local cluster: a kubelet with containerd, runc and CNI plugins, and
# kube-proxy, so that pods run as real containers next to kwok's fake nodes. Sourced by
# cluster-up.sh (bavs_node_network_up before the API server, bavs_node_up after the scheduler)
# and cluster-down.sh (bavs_node_down); not meant to be run.
#
# Network: the node lives in its own network namespace, as a kind node lives in its own
# container. Everything the kubelet, containerd's CNI plugins and kube-proxy change (the pod
# bridge, ip_forward, nftables rules, the kubelet's iptables chains, conntrack timeouts) changes
# in that namespace only, and goes away with it. One veth pair joins it to this machine:
#
#   this machine (init netns)                     netns bavs-node
#   bavs-host 10.250.1.1/30  <--- veth --->  bavs-node0 10.250.1.2/30 (the node's InternalIP)
#   routes: 10.250.0.0/24 (pods) and the          bridge cni-bavs0 10.250.0.1/24, pods .10-.254
#   service range via 10.250.1.2                  no default route: pods reach this machine's
#                                                 10.250.1.1 and each other, nothing else
#
# The API server listens on 10.250.1.1 (pods reach it through Service default/kubernetes), and
# this machine reaches pod IPs and ClusterIPs (kube-proxy's DNAT runs in the node's namespace),
# which is what the aggregation layer needs to call an APIService served by a pod. This
# machine does not forward packets (ip_forward stays as it is, 0 here), so nothing a pod sends
# can leave the machine.
#
# Scheduling: the node is tainted bavs.io/real-node=true:NoSchedule and labelled
# bavs.io/real-node=true, so the kwok suites never land a pod on it. A namespace opts in with
# two annotations (bavs_node_namespace_annotations) read by the API server's PodNodeSelector
# and PodTolerationRestriction admission plugins: every pod created in it, by any controller,
# gets the node selector and the toleration. The end-to-end suite annotates its namespaces so.
#
# Images are never pulled: they are built from the repository (testing/images/) and imported
# into this containerd; image garbage collection is off so that they stay.

BAVS_NODE_COMPONENTS=(containerd kubelet kube-proxy)

bavs_node_defaults() {
    # 1: cluster-up adds the real node; 0: kwok nodes only (the control plane then listens on
    # 127.0.0.1, as before the node existed). Two real nodes cannot share a machine (containerd
    # 1.6 keeps shim sockets in /run/containerd/s whatever its config), so a second cluster on
    # the same machine sets BAVS_REAL_NODE=0.
    : "${BAVS_REAL_NODE:=1}"
    : "${BAVS_NODE_NAME:=bavs-node-0}"
    : "${BAVS_NODE_NETNS:=bavs-node}"
    : "${BAVS_NODE_HOST_IP:=10.250.1.1}"
    : "${BAVS_NODE_IP:=10.250.1.2}"
    : "${BAVS_NODE_POD_CIDR:=10.250.0.0/24}"
    : "${BAVS_NODE_CLUSTER_DNS:=10.96.0.10}"
    : "${BAVS_KUBELET_PORT:=26250}"
    : "${BAVS_KUBELET_HEALTHZ_PORT:=26248}"
    : "${BAVS_KUBE_PROXY_HEALTHZ_PORT:=26256}"
    : "${BAVS_KUBE_PROXY_METRICS_PORT:=26249}"
    # Pods per node: the end-to-end suite runs ~12.
    : "${BAVS_NODE_MAX_PODS:=40}"
}

# The API server's address: on the veth when the node exists, else loopback.
bavs_apiserver_ip() {
    if ((BAVS_REAL_NODE)); then printf '%s\n' "$BAVS_NODE_HOST_IP"; else printf '127.0.0.1\n'; fi
}

bavs_node_paths() {
    NODE_DIR=$BAVS_CLUSTER_DIR/node
    CONTAINERD_DIR=$NODE_DIR/containerd
    CONTAINERD_SOCK=$CONTAINERD_DIR/containerd.sock
    KUBELET_DIR=$NODE_DIR/kubelet
    CNI_CONF_DIR=$NODE_DIR/cni
    NODE_ENV=$NODE_DIR/node.env
}

# The two namespace annotations that send every pod of a namespace to the real node.
bavs_node_namespace_annotations() {
    printf 'scheduler.alpha.kubernetes.io/node-selector=bavs.io/real-node=true\n'
    printf 'scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"bavs.io/real-node","operator":"Equal","value":"true","effect":"NoSchedule"}]\n'
}

bavs__in_node() { ip netns exec "$BAVS_NODE_NETNS" "$@"; }

# The pause and CoreDNS images from testing/images/build-images.sh's base-images.env.
bavs_node_base_images() {
    local env_file=${BAVS_IMAGES_DIR:-$BAVS_REPO_ROOT/target/images}/base-images.env
    [[ -s $env_file ]] || bavs_die "$env_file is missing: testing/images/build-images.sh did not finish"
    BAVS_NODE_PAUSE_IMAGE=$(sed -n 's/^BAVS_IMAGE_PAUSE_REF=//p' "$env_file")
    BAVS_NODE_PAUSE_ARCHIVE=$(sed -n 's/^BAVS_IMAGE_PAUSE_ARCHIVE=//p' "$env_file")
    BAVS_NODE_COREDNS_ARCHIVE=$(sed -n 's/^BAVS_IMAGE_COREDNS_ARCHIVE=//p' "$env_file")
    [[ -s $BAVS_NODE_PAUSE_ARCHIVE && -s $BAVS_NODE_COREDNS_ARCHIVE ]] ||
        bavs_die "$env_file names no pause or CoreDNS image archive"
}

# ---- network: before the API server, which listens on the veth --------------------------
bavs_node_network_up() {
    command -v ip >/dev/null || bavs_die "'ip' (iproute2) is missing: apt-get install -y iproute2"
    if ip netns list | grep -qw "^$BAVS_NODE_NETNS"; then
        bavs_die "network namespace $BAVS_NODE_NETNS exists already (another cluster's node, or a leftover):
       stop that cluster with cluster-down.sh, or start this one with BAVS_REAL_NODE=0"
    fi
    ip link show bavs-host >/dev/null 2>&1 &&
        bavs_die "interface bavs-host exists already: another cluster's node is up (cluster-down.sh stops it)"
    bavs_node_paths
    mkdir -p "$NODE_DIR"
    # Written first: cluster-down removes only a namespace this cluster recorded as its own.
    printf 'BAVS_NODE_NETNS=%s\n' "$BAVS_NODE_NETNS" >"$NODE_ENV"
    ip netns add "$BAVS_NODE_NETNS"
    ip link add bavs-host type veth peer name bavs-node0 netns "$BAVS_NODE_NETNS"
    ip addr add "$BAVS_NODE_HOST_IP/30" dev bavs-host
    ip link set bavs-host up
    ip -n "$BAVS_NODE_NETNS" link set lo up
    ip -n "$BAVS_NODE_NETNS" addr add "$BAVS_NODE_IP/30" dev bavs-node0
    ip -n "$BAVS_NODE_NETNS" link set bavs-node0 up
    # This machine reaches pods and ClusterIPs through the node (kube-proxy DNATs there).
    ip route add "$BAVS_NODE_POD_CIDR" via "$BAVS_NODE_IP" dev bavs-host
    ip route add "$BAVS_KUBE_SERVICE_CIDR" via "$BAVS_NODE_IP" dev bavs-host
    # Inside the node: pod <-> pod through a ClusterIP needs forwarding (the CNI bridge plugin
    # would switch it on anyway); bridged traffic goes through netfilter so that kube-proxy's
    # DNAT sees pod -> ClusterIP -> pod on the same bridge.
    bavs__in_node sysctl -qw net.ipv4.ip_forward=1
    bavs__in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
    bavs_info "node network: netns $BAVS_NODE_NETNS, node $BAVS_NODE_IP, this machine $BAVS_NODE_HOST_IP, pods $BAVS_NODE_POD_CIDR"
}

# ---- certificates (called inside cluster-up's PKI step) ----------------------------------
bavs_node_certs() {
    # The kubelet's client identity: the Node authorizer and NodeRestriction admit it without
    # a bootstrap token or CSR.
    bavs__cert ca kubelet-client "/O=system:nodes/CN=system:node:$BAVS_NODE_NAME" clientAuth
    # The kubelet's serving cert, signed by the cluster CA so that the API server verifies it
    # (--kubelet-certificate-authority) for logs, exec, port-forward and metrics.
    bavs__cert ca kubelet-serving "/O=system:nodes/CN=system:node:$BAVS_NODE_NAME" serverAuth \
        "DNS:$BAVS_NODE_NAME,IP:$BAVS_NODE_IP"
    bavs__cert ca kube-proxy "/CN=system:kube-proxy" clientAuth
    # The API server's client cert towards kubelets (the kubelet authorizes it by webhook).
    bavs__cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
}

# ---- containerd, kubelet, kube-proxy --------------------------------------------------------
bavs__node_configs() {
    mkdir -p "$CONTAINERD_DIR" "$KUBELET_DIR/root" "$KUBELET_DIR/manifests" "$KUBELET_DIR/pki" \
        "$KUBELET_DIR/pod-logs" "$CNI_CONF_DIR" "$NODE_DIR/cni-ipam"
    # Only what differs from containerd's defaults. Everything lives under the node dir except
    # what containerd 1.6 puts in fixed places (/run/containerd/s and /run/containerd/fifo: shim
    # sockets and fifos; /var/lib/cni: libcni's result cache), which bavs_node_down cleans.
    cat >"$CONTAINERD_DIR/config.toml" <<EOF
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # This machine has no AppArmor, and forbids lowering oom_score_adj: without
  # restrict_oom_score_adj runc fails every sandbox ("can't get final child's PID from pipe")
  # because the kubelet asks -998 for it.
  disable_apparmor = true
  restrict_oom_score_adj = true
  # Built from Kubernetes' pause.c by testing/images/; never pulled.
  sandbox_image = "$BAVS_NODE_PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$BAVS_CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "$CONTAINERD_DIR/runc"
EOF
    local pod_net=${BAVS_NODE_POD_CIDR%/*}
    cat >"$CNI_CONF_DIR/10-bavs.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bavs",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni-bavs0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$BAVS_NODE_POD_CIDR", "rangeStart": "${pod_net%.*}.10", "gateway": "${pod_net%.*}.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    # Pods get the cluster DNS only; never this machine's resolver.
    printf 'search cluster.local\nnameserver %s\n' "$BAVS_NODE_CLUSTER_DNS" >"$KUBELET_DIR/resolv.conf"
    cat >"$KUBELET_DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid); kubelet 1.37 still runs on it when told so.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $BAVS_NODE_IP
port: $BAVS_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $BAVS_KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
staticPodPath: $KUBELET_DIR/manifests
podLogsDir: $KUBELET_DIR/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$BAVS_NODE_CLUSTER_DNS]
resolvConf: $KUBELET_DIR/resolv.conf
failSwapOn: false
registerNode: true
registerWithTaints:
- {key: bavs.io/real-node, value: "true", effect: NoSchedule}
serializeImagePulls: false
# The images were imported, not pulled: garbage collecting them would lose them for good.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
podCIDR: $BAVS_NODE_POD_CIDR
maxPods: $BAVS_NODE_MAX_PODS
EOF
    cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $BAVS_CLUSTER_DIR/kube-proxy.kubeconfig
# nftables: kube-proxy's own tables in the node's namespace.
mode: nftables
hostnameOverride: $BAVS_NODE_NAME
clusterCIDR: $BAVS_NODE_POD_CIDR
bindAddress: $BAVS_NODE_IP
healthzBindAddress: 127.0.0.1:$BAVS_KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$BAVS_KUBE_PROXY_METRICS_PORT
nodePortAddresses: ["$BAVS_NODE_IP/32"]
# nf_conntrack_max is global to the machine: leave it alone.
conntrack:
  maxPerCore: 0
EOF
}

bavs_node_up() {
    bavs_node_paths
    bavs__node_configs
    bavs_start containerd nsenter --net="/run/netns/$BAVS_NODE_NETNS" -- \
        containerd --config "$CONTAINERD_DIR/config.toml"
    containerd_ready() { ctr --address "$CONTAINERD_SOCK" version; }
    bavs_wait containerd "ctr version" containerd_ready
    local archive
    for archive in "$BAVS_NODE_PAUSE_ARCHIVE" "$BAVS_NODE_COREDNS_ARCHIVE"; do
        bavs_info "importing $archive"
        ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null ||
            bavs_die "could not import $archive into the node's containerd"
    done

    bavs_start kubelet nsenter --net="/run/netns/$BAVS_NODE_NETNS" -- \
        "$BAVS_K8S_DIR/kubelet" \
        --config "$KUBELET_DIR/config.yaml" \
        --kubeconfig "$BAVS_CLUSTER_DIR/kubelet.kubeconfig" \
        --root-dir "$KUBELET_DIR/root" \
        --cert-dir "$KUBELET_DIR/pki" \
        --hostname-override "$BAVS_NODE_NAME" \
        --node-ip "$BAVS_NODE_IP" \
        --node-labels "bavs.io/real-node=true" \
        --v 1
    node_ready() {
        [[ $(kubectl_admin get node "$BAVS_NODE_NAME" \
            -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
    }
    bavs_wait kubelet "node $BAVS_NODE_NAME Ready" node_ready

    bavs_start kube-proxy nsenter --net="/run/netns/$BAVS_NODE_NETNS" -- \
        "$BAVS_K8S_DIR/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --v 1
    proxy_healthy() { bavs__in_node curl -fsS --max-time 5 "http://127.0.0.1:$BAVS_KUBE_PROXY_HEALTHZ_PORT/healthz"; }
    bavs_wait kube-proxy "GET /healthz" proxy_healthy

    bavs_coredns_manifest | kubectl_admin apply -f - >"$(bavs_logfile kubectl-apply-coredns)" 2>&1 ||
        bavs_fail_with_log kubectl "$(bavs_logfile kubectl-apply-coredns)" "could not apply CoreDNS ($BAVS_COREDNS_MANIFEST)"
    coredns_ready() {
        [[ $(kubectl_admin -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}') == 1 ]]
    }
    bavs_wait kubelet "CoreDNS Ready (Service kube-system/kube-dns, $BAVS_NODE_CLUSTER_DNS)" coredns_ready
}

# ---- teardown -----------------------------------------------------------------------------
# Stops the node and removes everything it made but its network (bavs_node_network_down):
# containers, mounts, cgroups, and the few files containerd and the kubelet write outside the
# node dir. Idempotent.
bavs_node_down() {
    local say=$1 pid m ids='' id
    bavs_node_paths
    # No record: this cluster never had a node (BAVS_REAL_NODE=0, or an older cluster dir).
    [[ -s $NODE_ENV ]] || return 0
    for c in kube-proxy kubelet; do
        if pid=$(bavs_component_pid "$c"); then
            $say "stopping $c (pid $pid)"
            bavs_stop_component "$c" 15 || bavs_die "$c (pid $pid) did not stop"
        fi
    done
    # The kubelet leaves its pods running when it stops: kill them through containerd.
    if bavs_component_pid containerd >/dev/null; then
        ids=$(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null || true)
        if [[ -n $ids ]]; then
            $say "killing $(wc -w <<<"$ids") container(s) of the node"
            for id in $ids; do ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
            sleep 1
            for id in $ids; do ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true; done
        fi
        for id in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io containers ls -q 2>/dev/null || true); do
            ctr --address "$CONTAINERD_SOCK" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
        done
        pid=$(bavs_component_pid containerd)
        $say "stopping containerd (pid $pid)"
        bavs_stop_component containerd 15 || bavs_die "containerd (pid $pid) did not stop"
    fi
    # Shims outlive containerd by design; ours name our socket on their command line.
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Mounts under the node dir (pod volumes, rootfs overlays, netns files), deepest first.
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$NODE_DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    # Pod cgroups of the cgroupfs driver (cgroup v1: one tree per controller), deepest first.
    for m in /sys/fs/cgroup/*/kubepods; do
        [[ -d $m ]] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    # Fixed paths of containerd 1.6, the kubelet and libcni (see the config comments).
    # libcni's results are named <network>-<sandbox id>-<interface>.
    for id in $ids; do rm -f /var/lib/cni/results/*-"$id"-*; done
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null || true
    rm -rf /var/lib/cni/results/bavs-* /var/lib/kubelet/device-plugins /var/lib/kubelet/plugins_registry \
        /var/lib/kubelet/plugins /var/lib/kubelet/pod-resources 2>/dev/null || true
    rmdir /var/lib/kubelet /var/lib/cni/results /var/lib/cni 2>/dev/null || true
    find /var/log/containers -maxdepth 1 -xtype l -delete 2>/dev/null || true
    rmdir /var/log/containers 2>/dev/null || true
}

# Removes the node's network namespace (with the veth, the pod bridge and every rule in it).
# After the control plane has stopped: the API server listens on the veth until it exits.
bavs_node_network_down() {
    local say=$1 netns
    bavs_node_paths
    [[ -s $NODE_ENV ]] || return 0
    netns=$(sed -n 's/^BAVS_NODE_NETNS=//p' "$NODE_ENV")
    if [[ -n $netns ]] && ip netns list | grep -qw "^$netns"; then
        $say "removing network namespace $netns (node network, pod bridge, kube-proxy rules)"
        ip netns delete "$netns"
    fi
}
