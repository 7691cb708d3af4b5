#!/usr/bin/env bash
# Smoke-test a running local stack (started by stack-up.sh):
#   - all three services run (pid files),
#   - RabbitMQ management API answers with the generated credentials,
#   - MinIO /minio/health/ready is 200,
#   - clamd detects EICAR and the BucketAV test marker (TCP and unix socket),
#   - an object upload reaches a RabbitMQ queue as a MinIO event (the check
#     declares and afterwards deletes its own exchange, queue and bucket).
#
#   bash testing/stack/check.sh              (or: just stack-check)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/stack/lib.sh
. "$here/lib.sh"

bavs_load_stack || bavs_die "no stack in $BAVS_STACK_DIR (no stack.env); run testing/stack/stack-up.sh first"
bavs_stack_binaries
export BAVS_STACK_ENV=$STACK_ENV

bavs_step "services"
bash "$here/service.sh" status all | sed 's/^/    /' || bavs_die "not all services are running"

bavs_step "rabbitmq management API"
"$BAVS_STACK_PROBE_BIN" rabbitmq-overview | sed 's/^/    /'

bavs_step "minio health"
bavs_minio_ready || bavs_die "minio: $BAVS_S3_ENDPOINT/minio/health/ready is not 200"
bavs_info "ready"

bavs_step "clamd detections (tcp + unix socket)"
"$BAVS_STACK_PROBE_BIN" clamd-selftest --tcp "$BAVS_CLAMD_TCP" --unix "$BAVS_CLAMD_SOCKET"
bavs_info "EICAR -> Eicar-Test-Signature.UNOFFICIAL, marker -> BucketAV.Test.Marker.UNOFFICIAL, clean -> OK"

bavs_step "minio -> rabbitmq event ($BAVS_NOTIFY_ARN)"
"$BAVS_STACK_PROBE_BIN" events-check | sed 's/^/    /'

bavs_step "stack OK"
