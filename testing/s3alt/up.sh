#!/usr/bin/env bash
# Start the second S3 server, an S3 store that is not MinIO and has no bucket notifications
# configured: the Versity S3 gateway (POSIX backend) on 127.0.0.1, for the listing-based sweep
# and the probe test testing/tests/alt_s3_store.rs.
#
#   bash testing/s3alt/up.sh [DIR]         (DIR default: <repo>/target/s3alt, or $BAVS_S3ALT_DIR)
#
# Builds the pinned binary first when it is not cached (provision.sh). The server is throwaway:
# every up stops the server still running from DIR and wipes DIR (only a DIR that up.sh created,
# or an empty one). Buckets and objects live under DIR/data (one directory per bucket, object
# metadata and tags in extended attributes), the log is DIR/versitygw.log, the PID DIR/versitygw.pid.
# Connection details go to DIR/s3alt.env:
#   BAVS_ALT_S3_ENDPOINT BAVS_ALT_S3_ACCESS_KEY BAVS_ALT_S3_SECRET_KEY BAVS_ALT_S3_REGION BAVS_ALT_S3_KIND
# Overridable from the environment: BAVS_S3ALT_PORT (19300), BAVS_S3ALT_ACCESS_KEY,
# BAVS_S3ALT_SECRET_KEY, BAVS_S3ALT_REGION (us-east-1), BAVS_S3ALT_TIMEOUT (30 s).
# Stop it with down.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/s3alt/provision.sh
. "$here/provision.sh"

[[ -n ${1:-} ]] && BAVS_S3ALT_DIR=$1
bavs_s3alt_defaults
S3ALT_MARKER=$BAVS_S3ALT_DIR/.bavs-s3alt

if ! [[ $BAVS_S3ALT_PORT =~ ^[0-9]+$ ]] || ((BAVS_S3ALT_PORT < 1 || BAVS_S3ALT_PORT > 65535)); then
    bavs_die "BAVS_S3ALT_PORT=$BAVS_S3ALT_PORT is not a port number"
fi
[[ $BAVS_S3ALT_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    bavs_die "BAVS_S3ALT_DIR=$BAVS_S3ALT_DIR: use a path made of letters, digits and ._/+- only (it goes unquoted into s3alt.env)"
for v in BAVS_S3ALT_ACCESS_KEY BAVS_S3ALT_SECRET_KEY BAVS_S3ALT_REGION; do
    [[ ${!v} =~ ^[A-Za-z0-9._+-]+$ ]] || bavs_die "$v: use letters, digits and ._+- only (it goes unquoted into s3alt.env)"
done

bavs_step "provision (pinned versitygw)"
bavs_s3alt_provision | sed 's/^/    /'

if bavs_s3alt_running; then
    bavs_step "stopping the previous server in $BAVS_S3ALT_DIR"
    bavs_stop_pid versitygw "$S3ALT_PID" versitygw 20 || bavs_die "could not stop versitygw (pid $(<"$S3ALT_PID"))"
fi
bavs_s3alt_require_free_port

bavs_step "creating $BAVS_S3ALT_DIR"
if [[ -e $BAVS_S3ALT_DIR ]]; then
    if [[ ! -f $S3ALT_MARKER ]] && [[ -n $(ls -A "$BAVS_S3ALT_DIR") ]]; then
        bavs_die "$BAVS_S3ALT_DIR exists, is not empty and was not created by testing/s3alt/up.sh (no .bavs-s3alt marker); refusing to wipe it"
    fi
    rm -rf "$BAVS_S3ALT_DIR"
fi
umask 077
mkdir -p "$S3ALT_DATA"
echo "created by testing/s3alt/up.sh; wiped by the next up" >"$S3ALT_MARKER"

bavs_step "starting versitygw $VERSITYGW_VERSION (posix) on 127.0.0.1:$BAVS_S3ALT_PORT"
# Credentials through the environment (ROOT_ACCESS_KEY/ROOT_SECRET_KEY), not the command line
# that `ps` shows. --quiet: no line per request in the log. --keep-alive: versitygw closes every
# connection after one response by default (Connection: close); the worker's client keeps a pool.
ROOT_ACCESS_KEY=$BAVS_S3ALT_ACCESS_KEY ROOT_SECRET_KEY=$BAVS_S3ALT_SECRET_KEY \
    bavs_spawn "$S3ALT_PID" "$S3ALT_LOG" "$BAVS_VERSITYGW_BIN" \
    --port "127.0.0.1:$BAVS_S3ALT_PORT" --region "$BAVS_S3ALT_REGION" --quiet --keep-alive \
    posix "$S3ALT_DATA" ||
    bavs_fail_with_log versitygw "$S3ALT_LOG" "could not start $BAVS_VERSITYGW_BIN (no pid file $S3ALT_PID)"

# Ready = a SigV4-signed, path-style ListBuckets with our credentials answers 200: the port, the
# credentials and the signing all work. versitygw refuses a signed request without
# x-amz-content-sha256 (400 InvalidRequest), which curl does not send by itself: here the
# SHA-256 of the empty body.
deadline=$((SECONDS + BAVS_S3ALT_TIMEOUT))
until curl -fsS -o /dev/null -m 3 --aws-sigv4 "aws:amz:$BAVS_S3ALT_REGION:s3" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    --user "$BAVS_S3ALT_ACCESS_KEY:$BAVS_S3ALT_SECRET_KEY" "http://127.0.0.1:$BAVS_S3ALT_PORT/" 2>/dev/null; do
    bavs_s3alt_running || bavs_fail_with_log versitygw "$S3ALT_LOG" "the server exited during startup"
    ((SECONDS < deadline)) ||
        bavs_fail_with_log versitygw "$S3ALT_LOG" "no signed ListBuckets answer on 127.0.0.1:$BAVS_S3ALT_PORT after ${BAVS_S3ALT_TIMEOUT}s"
    sleep 0.2
done

cat >"$S3ALT_ENV" <<EOF2
# Written by testing/s3alt/up.sh: the second S3 server (not MinIO, no bucket notifications).
# Stop it with: BAVS_S3ALT_DIR=$BAVS_S3ALT_DIR bash testing/s3alt/down.sh
BAVS_ALT_S3_ENDPOINT=http://127.0.0.1:$BAVS_S3ALT_PORT
BAVS_ALT_S3_ACCESS_KEY=$BAVS_S3ALT_ACCESS_KEY
BAVS_ALT_S3_SECRET_KEY=$BAVS_S3ALT_SECRET_KEY
BAVS_ALT_S3_REGION=$BAVS_S3ALT_REGION
BAVS_ALT_S3_KIND=$BAVS_S3ALT_KIND
BAVS_ALT_S3_VERSION=$VERSITYGW_VERSION
BAVS_ALT_S3_PID_FILE=$S3ALT_PID
BAVS_ALT_S3_LOG=$S3ALT_LOG
EOF2

bavs_step "versitygw up (pid $(<"$S3ALT_PID")): http://127.0.0.1:$BAVS_S3ALT_PORT, env in $S3ALT_ENV"
