#!/usr/bin/env bash
# Stop the local test stack started by stack-up.sh: MinIO, clamd, RabbitMQ and
# the epmd RabbitMQ started on its private port. Only processes recorded in the
# stack's pid files are signalled (SIGTERM / graceful stop, SIGKILL after a
# timeout). The stack dir is kept for post-mortem; the next stack-up wipes it.
# Idempotent: fine when nothing is running or no stack was ever started.
#
#   bash testing/stack/stack-down.sh         (or: just stack-down)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/stack/lib.sh
. "$here/lib.sh"

quiet=false
[[ ${1:-} == --quiet ]] && quiet=true
say() { $quiet || bavs_step "$@"; }

if ! bavs_load_stack; then
    say "no stack in ${BAVS_STACK_DIR} (no stack.env): nothing to stop"
    exit 0
fi

# MinIO first (it publishes to RabbitMQ), RabbitMQ and its epmd last.
say "stopping minio"
bavs_minio_stop
say "stopping clamd"
bavs_clamd_stop
say "stopping rabbitmq"
bavs_rabbitmq_stop
bavs_epmd_stop

left=()
for p in "$MINIO_PID:minio" "$CLAMD_PID:clamd" "$RMQ_PID:beam" "$RMQ_WRAPPER_PID:rabbitmq-server" "$RMQ_EPMD_PID:epmd"; do
    bavs_pid_alive "${p%:*}" "${p##*:}" >/dev/null && left+=("${p##*:}")
done
((${#left[@]} == 0)) || bavs_die "still running: ${left[*]}"

say "stack stopped; data and logs kept in $BAVS_STACK_DIR (wiped by the next stack-up)"
