#!/usr/bin/env bash
# Stop the second S3 server started by up.sh. Only the process recorded in its PID file is
# signalled (SIGTERM, SIGKILL after 20 s), and only when its command line is versitygw's.
# s3alt.env is removed (so that a test run next fails saying to run up.sh, not on a refused
# connection); data and log are kept for post-mortem, and the next up.sh wipes them.
# Idempotent: fine when nothing is running or no server was ever started.
#
#   bash testing/s3alt/down.sh [DIR]       (DIR default: <repo>/target/s3alt, or $BAVS_S3ALT_DIR)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/s3alt/lib.sh
. "$here/lib.sh"

[[ -n ${1:-} ]] && BAVS_S3ALT_DIR=$1
bavs_s3alt_defaults

if ! bavs_s3alt_running; then
    rm -f "$S3ALT_PID" "$S3ALT_ENV"
    bavs_step "no versitygw running from $BAVS_S3ALT_DIR: nothing to stop"
    exit 0
fi
pid=$(<"$S3ALT_PID")
bavs_step "stopping versitygw (pid $pid)"
bavs_stop_pid versitygw "$S3ALT_PID" versitygw 20 || bavs_die "versitygw (pid $pid) is still running"
rm -f "$S3ALT_ENV"
bavs_step "versitygw stopped; data and log kept in $BAVS_S3ALT_DIR (wiped by the next up)"
