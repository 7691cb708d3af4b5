#!/usr/bin/env bash
# Start a fresh local stack for the real-stack tests: RabbitMQ (with the
# management plugin), clamd (with the test signatures in testing/signatures)
# and MinIO (with an AMQP notification target pointing at that RabbitMQ).
#
#   bash testing/stack/stack-up.sh          (or: just stack-up)
#
# The stack lives in ${BAVS_STACK_DIR:-<repo>/target/stack} and is throwaway:
# every stack-up stops a stack still running there, wipes it and generates new
# credentials. Connection details go to <stack>/stack.env (KEY=value lines).
# Stop it with stack-down.sh; control single services with service.sh.
# Ports and limits can be overridden by environment variables: see
# bavs_defaults in lib.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/stack/lib.sh
. "$here/lib.sh"
# shellcheck source=testing/stack/provision.sh
. "$here/provision.sh"

started=$SECONDS
bavs_defaults
bavs_paths

# ---- sanity checks on the configuration -------------------------------------
if [[ $BAVS_STACK_DIR != /* ]]; then
    BAVS_STACK_DIR="$PWD/$BAVS_STACK_DIR"
    bavs_paths
fi
[[ $BAVS_STACK_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    bavs_die "BAVS_STACK_DIR=$BAVS_STACK_DIR: use a path made of letters, digits and ._/+- only (it goes unquoted into stack.env)"
((${#CLAMD_SOCKET} < 100)) ||
    bavs_die "clamd socket path $CLAMD_SOCKET is too long for a unix socket; use a shorter BAVS_STACK_DIR"
for v in BAVS_RABBITMQ_PORT BAVS_RABBITMQ_MANAGEMENT_PORT BAVS_RABBITMQ_DIST_PORT BAVS_RABBITMQ_EPMD_PORT \
    BAVS_RABBITMQ_CTL_DIST_PORT_MIN BAVS_MINIO_PORT BAVS_MINIO_CONSOLE_PORT BAVS_CLAMD_PORT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} < 1 || ${!v} > 65535)); then
        bavs_die "$v=${!v} is not a port number"
    fi
done
[[ $BAVS_CLAMD_STREAM_MAX_LENGTH =~ ^[0-9]+[KkMm]?$ ]] ||
    bavs_die "BAVS_CLAMD_STREAM_MAX_LENGTH=$BAVS_CLAMD_STREAM_MAX_LENGTH: expected <n>, <n>K or <n>M"
for v in BAVS_CLAMD_SCAN_TIMEOUT_SECONDS BAVS_CLAMD_MAX_THREADS BAVS_CLAMD_MAX_QUEUE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || bavs_die "$v=${!v}: expected a positive number"
done
for v in BAVS_CLAMD_MAX_FILE_SIZE BAVS_CLAMD_MAX_SCAN_SIZE; do
    [[ -z ${!v:-} ]] || bavs_warn "$v is ignored: clamd's limits come from the stack policy (see the clamd section of stack-up.sh)"
done
[[ $BAVS_NOTIFY_TARGET_ID =~ ^[A-Za-z0-9_]+$ ]] || bavs_die "BAVS_NOTIFY_TARGET_ID must be [A-Za-z0-9_]+"

# ---- 1. tools -----------------------------------------------------------------
bavs_step "provision (pinned tools)"
bavs_provision | sed 's/^/    /'
# clamd.conf is the one the operator renders (`bucket-av-operator clamd-config`); stack-probe
# runs the self-checks at the end.
bavs_stack_binaries

# ---- 2. stop whatever still runs from this stack dir ------------------------
if [[ -f $STACK_ENV ]]; then
    bavs_step "stopping the previous stack in $BAVS_STACK_DIR"
    BAVS_STACK_DIR=$BAVS_STACK_DIR bash "$here/stack-down.sh" --quiet
fi

bavs_require_free rabbitmq "$BAVS_RABBITMQ_PORT" "$BAVS_RABBITMQ_MANAGEMENT_PORT" "$BAVS_RABBITMQ_DIST_PORT"
bavs_require_free clamd "$BAVS_CLAMD_PORT"
bavs_require_free minio "$BAVS_MINIO_PORT" "$BAVS_MINIO_CONSOLE_PORT"
# epmd on our private port may only be one we started (recorded in epmd.pid) - it was stopped above
bavs_require_free "rabbitmq epmd" "$BAVS_RABBITMQ_EPMD_PORT"

# ---- 3. fresh stack dir -------------------------------------------------------
bavs_step "creating $BAVS_STACK_DIR"
if [[ -e $BAVS_STACK_DIR ]]; then
    if [[ ! -f $STACK_MARKER ]] && [[ -n $(ls -A "$BAVS_STACK_DIR") ]]; then
        bavs_die "$BAVS_STACK_DIR exists, is not empty and was not created by stack-up.sh (no .bavs-stack marker); refusing to wipe it"
    fi
    rm -rf "$BAVS_STACK_DIR"
fi
umask 077
mkdir -p "$BAVS_STACK_DIR" "$RMQ_HOME" "$RMQ_MNESIA" "$RMQ_LOG_DIR" \
    "$MINIO_DATA" "$MINIO_QUEUE_DIR" "$MINIO_DIR/certs" \
    "$CLAMD_DB" "$CLAMD_TMP"
echo "created by testing/stack/stack-up.sh; wiped by the next stack-up" >"$STACK_MARKER"

# Random credentials (hex: nothing URL-special, no '&').
bavs_rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
BAVS_RABBITMQ_USER=bavs-$(bavs_rand_hex 4)
BAVS_RABBITMQ_PASSWORD=$(bavs_rand_hex 16)
BAVS_S3_ACCESS_KEY=bavs$(bavs_rand_hex 8)
BAVS_S3_SECRET_KEY=$(bavs_rand_hex 20)
BAVS_NOTIFY_ARN="arn:minio:sqs::$BAVS_NOTIFY_TARGET_ID:amqp"  # verified against the server below

# ---- RabbitMQ: its own node, everything under the stack dir -------------------
# The Erlang cookie is shared by the node and the CLI tools through HOME.
bavs_rand_hex 16 >"$RMQ_HOME/.erlang.cookie"
chmod 400 "$RMQ_HOME/.erlang.cookie"
: >"$RMQ_DIR/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
cat >"$RMQ_ENV_FILE" <<EOF
# Environment of the stack's RabbitMQ node and its CLI tools (sourced, POSIX sh).
HOME='$RMQ_HOME'
RABBITMQ_NODENAME='$BAVS_RABBITMQ_NODENAME'
RABBITMQ_USE_LONGNAME=false
RABBITMQ_CONF_ENV_FILE='$RMQ_DIR/rabbitmq-env.conf'
RABBITMQ_CONFIG_FILE='$RMQ_CONF'
RABBITMQ_ADVANCED_CONFIG_FILE='$RMQ_DIR/advanced.config'
RABBITMQ_ENABLED_PLUGINS_FILE='$RMQ_PLUGINS_FILE'
RABBITMQ_MNESIA_BASE='$RMQ_MNESIA'
RABBITMQ_LOG_BASE='$RMQ_LOG_DIR'
RABBITMQ_PID_FILE='$RMQ_PID'
RABBITMQ_DIST_PORT='$BAVS_RABBITMQ_DIST_PORT'
RABBITMQ_CTL_DIST_PORT_MIN='$BAVS_RABBITMQ_CTL_DIST_PORT_MIN'
RABBITMQ_CTL_DIST_PORT_MAX='$BAVS_RABBITMQ_CTL_DIST_PORT_MAX'
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ERL_EPMD_PORT='$BAVS_RABBITMQ_EPMD_PORT'
ERL_EPMD_ADDRESS=127.0.0.1
EOF
cat >"$RMQ_CONF" <<EOF
# Generated by testing/stack/stack-up.sh
listeners.tcp.default = 127.0.0.1:$BAVS_RABBITMQ_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $BAVS_RABBITMQ_MANAGEMENT_PORT
default_vhost = /
default_user = $BAVS_RABBITMQ_USER
default_pass = $BAVS_RABBITMQ_PASSWORD
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
# 1 hour: a scan may keep a delivery unacked for a long time
consumer_timeout = 3600000
log.file.level = info
EOF
echo '[rabbitmq_management].' >"$RMQ_PLUGINS_FILE"

# ---- clamd ------------------------------------------------------------------------
# clamd runs exactly the configuration the operator renders for a sidecar (operator/src/
# clamd_config.rs: limits derived from the policy, every limit and encrypted file alerted), for
# this policy and with the stack's own paths, listeners and queue length.
cp "$BAVS_REPO_ROOT"/testing/signatures/*.hdb "$BAVS_REPO_ROOT"/testing/signatures/*.ndb "$CLAMD_DB/"
cat >"$CLAMD_POLICY" <<EOF
# The stack's clamd is configured for this policy (testing/stack/stack-up.sh); only its scanner
# and workers settings matter here.
apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata:
  name: test-stack
spec:
  minio:
    endpoint: http://127.0.0.1:$BAVS_MINIO_PORT
    credentialsSecret:
      name: unused
  buckets:
    - name: test-stack
  rabbitmq:
    urlSecret:
      name: unused
      key: url
  scanner:
    external:
      address: 127.0.0.1:$BAVS_CLAMD_PORT
    maxObjectSize: "$(bavs_size_bytes "$BAVS_CLAMD_STREAM_MAX_LENGTH")"
    scanTimeoutSeconds: $BAVS_CLAMD_SCAN_TIMEOUT_SECONDS
  workers:
    # MaxThreads: the scans of all the suites' workers at once share this clamd.
    concurrency: $BAVS_CLAMD_MAX_THREADS
EOF
"$BAVS_OPERATOR_BIN" clamd-config --policy "$CLAMD_POLICY" \
    --database-directory "$CLAMD_DB" --temporary-directory "$CLAMD_TMP" \
    --pid-file "$CLAMD_PID" --log-file "$CLAMD_LOG" --foreground=false \
    --local-socket "$CLAMD_SOCKET" --tcp "127.0.0.1:$BAVS_CLAMD_PORT" \
    --max-queue "$BAVS_CLAMD_MAX_QUEUE" >"$CLAMD_CONF" ||
    bavs_die "bucket-av-operator clamd-config failed for $CLAMD_POLICY"
# What the tests read from stack.env: the limits as rendered.
bavs_clamd_conf_number() {
    local value
    value=$(sed -n "s/^$1 \([0-9][0-9]*\)$/\1/p" "$CLAMD_CONF")
    [[ -n $value ]] || bavs_die "no $1 in $CLAMD_CONF"
    echo "$value"
}
BAVS_CLAMD_STREAM_MAX_BYTES=$(bavs_clamd_conf_number StreamMaxLength)
BAVS_CLAMD_MAX_FILE_SIZE_BYTES=$(bavs_clamd_conf_number MaxFileSize)
BAVS_CLAMD_MAX_SCAN_SIZE_BYTES=$(bavs_clamd_conf_number MaxScanSize)

# ---- MinIO ------------------------------------------------------------------------
id=$BAVS_NOTIFY_TARGET_ID
cat >"$MINIO_ENV_FILE" <<EOF
# Environment of the stack's MinIO server (sourced).
MINIO_ROOT_USER=$BAVS_S3_ACCESS_KEY
MINIO_ROOT_PASSWORD=$BAVS_S3_SECRET_KEY
MINIO_UPDATE=off
# Store each event (in the target's queue_dir) before the upload is answered. MinIO's default
# hands events to an in-memory queue after answering: they are lost when MinIO stops, and
# dropped when that queue is full. The fault-injection suite lost uploads this way.
MINIO_API_SYNC_EVENTS=on
# Serve S3 only once the buckets' notification rules and targets are loaded. MinIO's default
# answers uploads while it still loads them after a restart, and those uploads raise no event.
MINIO_SYNC_BOOT=on
# A static KMS key (a fresh one per stack) so the suites can store SSE-S3 and SSE-KMS objects:
# their ETags are not content hashes and a server-side copy gets a new one, which the worker's
# guards must handle. Objects are only encrypted when an upload or the bucket asks for it.
MINIO_KMS_SECRET_KEY=bavs-test-key:$(head -c 32 /dev/urandom | base64)
MINIO_NOTIFY_AMQP_ENABLE_$id=on
MINIO_NOTIFY_AMQP_URL_$id=amqp://$BAVS_RABBITMQ_USER:$BAVS_RABBITMQ_PASSWORD@127.0.0.1:$BAVS_RABBITMQ_PORT/
MINIO_NOTIFY_AMQP_EXCHANGE_$id=$BAVS_EXCHANGE
MINIO_NOTIFY_AMQP_EXCHANGE_TYPE_$id=$BAVS_EXCHANGE_TYPE
MINIO_NOTIFY_AMQP_ROUTING_KEY_$id=$BAVS_ROUTING_KEY
MINIO_NOTIFY_AMQP_DURABLE_$id=on
MINIO_NOTIFY_AMQP_DELIVERY_MODE_$id=2
MINIO_NOTIFY_AMQP_QUEUE_DIR_$id=$MINIO_QUEUE_DIR
MINIO_NOTIFY_AMQP_QUEUE_LIMIT_$id=100000
MINIO_NOTIFY_AMQP_PUBLISHING_CONFIRMS_$id=on
MINIO_NOTIFY_AMQP_MANDATORY_$id=off
MINIO_NOTIFY_AMQP_INTERNAL_$id=off
MINIO_NOTIFY_AMQP_AUTO_DELETED_$id=off
MINIO_NOTIFY_AMQP_NO_WAIT_$id=off
# A second target to the same exchange WITHOUT queue_dir, for latency measurements only: with
# queue_dir MinIO sends stored events from a 3 s replay ticker (internal/store/store.go), which
# dominates upload-to-verdict latency; without it events go out at once but are lost while
# RabbitMQ is down. Production uses the durable target.
MINIO_NOTIFY_AMQP_ENABLE_${id}DIRECT=on
MINIO_NOTIFY_AMQP_URL_${id}DIRECT=amqp://$BAVS_RABBITMQ_USER:$BAVS_RABBITMQ_PASSWORD@127.0.0.1:$BAVS_RABBITMQ_PORT/
MINIO_NOTIFY_AMQP_EXCHANGE_${id}DIRECT=$BAVS_EXCHANGE
MINIO_NOTIFY_AMQP_EXCHANGE_TYPE_${id}DIRECT=$BAVS_EXCHANGE_TYPE
MINIO_NOTIFY_AMQP_ROUTING_KEY_${id}DIRECT=$BAVS_ROUTING_KEY
MINIO_NOTIFY_AMQP_DURABLE_${id}DIRECT=on
MINIO_NOTIFY_AMQP_DELIVERY_MODE_${id}DIRECT=2
MINIO_NOTIFY_AMQP_PUBLISHING_CONFIRMS_${id}DIRECT=on
EOF

# ---- stack.env --------------------------------------------------------------------
bavs_write_stack_env() {
    local tmp=$STACK_ENV.tmp
    cat >"$tmp" <<EOF
# Local test stack of bucket-av-scanner, generated by testing/stack/stack-up.sh
# on $(date -u +%Y-%m-%dT%H:%M:%SZ). One KEY=value per line, no quoting; recreated
# (with new credentials) by every stack-up.

BAVS_STACK_DIR=$BAVS_STACK_DIR
# start|stop|restart|status rabbitmq|minio|clamd
BAVS_STACK_SERVICE_SCRIPT=$BAVS_STACK_SCRIPTS/service.sh

# MinIO (S3 API; path-style addressing)
BAVS_S3_ENDPOINT=http://127.0.0.1:$BAVS_MINIO_PORT
BAVS_S3_REGION=us-east-1
BAVS_S3_ACCESS_KEY=$BAVS_S3_ACCESS_KEY
BAVS_S3_SECRET_KEY=$BAVS_S3_SECRET_KEY
BAVS_NOTIFY_TARGET_ID=$BAVS_NOTIFY_TARGET_ID
BAVS_NOTIFY_ARN=$BAVS_NOTIFY_ARN
# same exchange and routing key, no queue_dir: for latency benchmarks only
BAVS_NOTIFY_DIRECT_ARN=arn:minio:sqs::${BAVS_NOTIFY_TARGET_ID}DIRECT:amqp
BAVS_MINIO_QUEUE_DIR=$MINIO_QUEUE_DIR
BAVS_MINIO_LOG=$MINIO_LOG

# RabbitMQ (what MinIO publishes to)
BAVS_AMQP_URL=amqp://$BAVS_RABBITMQ_USER:$BAVS_RABBITMQ_PASSWORD@127.0.0.1:$BAVS_RABBITMQ_PORT/%2f
BAVS_RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:$BAVS_RABBITMQ_MANAGEMENT_PORT
BAVS_RABBITMQ_USER=$BAVS_RABBITMQ_USER
BAVS_RABBITMQ_PASSWORD=$BAVS_RABBITMQ_PASSWORD
BAVS_EXCHANGE=$BAVS_EXCHANGE
BAVS_EXCHANGE_TYPE=$BAVS_EXCHANGE_TYPE
BAVS_ROUTING_KEY=$BAVS_ROUTING_KEY
BAVS_RABBITMQ_LOG_DIR=$RMQ_LOG_DIR

# clamd (test signatures only: Eicar-Test-Signature.UNOFFICIAL, BucketAV.Test.Marker.UNOFFICIAL)
BAVS_CLAMD_TCP=127.0.0.1:$BAVS_CLAMD_PORT
BAVS_CLAMD_SOCKET=$CLAMD_SOCKET
BAVS_CLAMD_STREAM_MAX_BYTES=$BAVS_CLAMD_STREAM_MAX_BYTES
BAVS_CLAMD_MAX_FILE_SIZE_BYTES=$BAVS_CLAMD_MAX_FILE_SIZE_BYTES
BAVS_CLAMD_MAX_SCAN_SIZE_BYTES=$BAVS_CLAMD_MAX_SCAN_SIZE_BYTES
BAVS_CLAMD_CONF=$CLAMD_CONF
BAVS_CLAMD_LOG=$CLAMD_LOG

# Settings the stack scripts reuse (service.sh, stack-down.sh)
BAVS_MINIO_BIN=$BAVS_MINIO_BIN
BAVS_RABBITMQ_NODENAME=$BAVS_RABBITMQ_NODENAME
BAVS_RABBITMQ_PORT=$BAVS_RABBITMQ_PORT
BAVS_RABBITMQ_MANAGEMENT_PORT=$BAVS_RABBITMQ_MANAGEMENT_PORT
BAVS_RABBITMQ_DIST_PORT=$BAVS_RABBITMQ_DIST_PORT
BAVS_RABBITMQ_EPMD_PORT=$BAVS_RABBITMQ_EPMD_PORT
BAVS_RABBITMQ_CTL_DIST_PORT_MIN=$BAVS_RABBITMQ_CTL_DIST_PORT_MIN
BAVS_MINIO_PORT=$BAVS_MINIO_PORT
BAVS_MINIO_CONSOLE_PORT=$BAVS_MINIO_CONSOLE_PORT
BAVS_CLAMD_PORT=$BAVS_CLAMD_PORT
BAVS_CLAMD_STREAM_MAX_LENGTH=$BAVS_CLAMD_STREAM_MAX_LENGTH
BAVS_CLAMD_SCAN_TIMEOUT_SECONDS=$BAVS_CLAMD_SCAN_TIMEOUT_SECONDS
BAVS_CLAMD_MAX_THREADS=$BAVS_CLAMD_MAX_THREADS
BAVS_CLAMD_MAX_QUEUE=$BAVS_CLAMD_MAX_QUEUE
BAVS_RABBITMQ_TIMEOUT=$BAVS_RABBITMQ_TIMEOUT
BAVS_MINIO_TIMEOUT=$BAVS_MINIO_TIMEOUT
BAVS_CLAMD_TIMEOUT=$BAVS_CLAMD_TIMEOUT
EOF
    chmod 600 "$tmp"
    mv -f "$tmp" "$STACK_ENV"
}
bavs_write_stack_env

# ---- 4. start the services (MinIO last: its AMQP target needs RabbitMQ) -----
t=$SECONDS
bavs_step "starting rabbitmq ($BAVS_RABBITMQ_NODENAME, AMQP 127.0.0.1:$BAVS_RABBITMQ_PORT)"
bavs_rabbitmq_start
bavs_info "ready in $((SECONDS - t))s"

t=$SECONDS
bavs_step "starting clamd (127.0.0.1:$BAVS_CLAMD_PORT + $CLAMD_SOCKET)"
bavs_clamd_start
bavs_info "ready in $((SECONDS - t))s"

t=$SECONDS
bavs_step "starting minio (127.0.0.1:$BAVS_MINIO_PORT)"
bavs_minio_start
bavs_info "ready in $((SECONDS - t))s"

# ---- 5. self-checks ---------------------------------------------------------------
bavs_step "checking clamd detections and the MinIO notification ARN"
"$BAVS_STACK_PROBE_BIN" clamd-selftest --tcp "127.0.0.1:$BAVS_CLAMD_PORT" --unix "$CLAMD_SOCKET" ||
    bavs_fail_with_log clamd "$CLAMD_LOG" "test signatures not detected as expected"
arn=$("$BAVS_STACK_PROBE_BIN" notify-arn --endpoint "http://127.0.0.1:$BAVS_MINIO_PORT" \
    --access-key "$BAVS_S3_ACCESS_KEY" --secret-key "$BAVS_S3_SECRET_KEY" --region us-east-1 \
    --target-id "$BAVS_NOTIFY_TARGET_ID") ||
    bavs_fail_with_log minio "$MINIO_LOG" "no queue ARN for target $BAVS_NOTIFY_TARGET_ID accepted by PutBucketNotificationConfiguration"
if [[ $arn != "$BAVS_NOTIFY_ARN" ]]; then
    BAVS_NOTIFY_ARN=$arn
    bavs_write_stack_env
fi

# ---- summary ----------------------------------------------------------------------
prefix=""
[[ $BAVS_STACK_DIR == "$BAVS_REPO_ROOT/target/stack" ]] || prefix="BAVS_STACK_DIR=$BAVS_STACK_DIR "
cat <<EOF
==> stack up in $((SECONDS - started))s
    S3 (MinIO)       http://127.0.0.1:$BAVS_MINIO_PORT  (console http://127.0.0.1:$BAVS_MINIO_CONSOLE_PORT)
    notify ARN       $BAVS_NOTIFY_ARN  -> exchange $BAVS_EXCHANGE ($BAVS_EXCHANGE_TYPE), key $BAVS_ROUTING_KEY
    AMQP             amqp://127.0.0.1:$BAVS_RABBITMQ_PORT/%2f  (user $BAVS_RABBITMQ_USER)
    RabbitMQ mgmt    http://127.0.0.1:$BAVS_RABBITMQ_MANAGEMENT_PORT
    clamd            127.0.0.1:$BAVS_CLAMD_PORT, $CLAMD_SOCKET
    env file         $STACK_ENV   (credentials; source it or read KEY=value lines)
    control          ${prefix}bash testing/stack/service.sh {start|stop|restart|status} {rabbitmq|minio|clamd}
    stop             ${prefix}bash testing/stack/stack-down.sh
EOF
