# shellcheck shell=bash
# What the second S3 server's scripts (provision.sh, up.sh, down.sh) share: the pinned version,
# where the binary is cached, and the defaults of a running server. Sourced; not meant to be run.
#
# The server is the Versity S3 gateway (Apache-2.0) with its POSIX backend: an S3 store that is
# not MinIO and has no bucket notifications, for the listing-based sweep. See README.md.

BAVS_S3ALT_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/lib.sh
source "$BAVS_S3ALT_SCRIPTS/../lib.sh"

# ---- pinned version ----------------------------------------------------------
# The one release the Go module proxy serves (`go list -m -versions github.com/versity/versitygw`).
# shellcheck disable=SC2034 # used by the scripts that source this file
{
    VERSITYGW_VERSION=v1.8.0
    VERSITYGW_MODULE=github.com/versity/versitygw
}
# ------------------------------------------------------------------------------

# shellcheck disable=SC2034 # used by the scripts that source this file
{
    BAVS_S3ALT_KIND=versitygw
    BAVS_VERSITYGW_DIR="$BAVS_TOOLS_DIR/versitygw-$VERSITYGW_VERSION"
    BAVS_VERSITYGW_BIN="$BAVS_VERSITYGW_DIR/bin/versitygw"
    BAVS_VERSITYGW_BUILD_LOG="$BAVS_TOOLS_DIR/versitygw-$VERSITYGW_VERSION.build.log"
}

bavs_fail_hint() { printf 'stop what is left with: BAVS_S3ALT_DIR=%s bash testing/s3alt/down.sh' "${BAVS_S3ALT_DIR:-}"; }

# Defaults of a running server, each overridable from the environment of up.sh. The port lies
# below Linux's ephemeral range (32768-60999) and clear of the ports of the stack and of the
# control plane (21672-29001; testing/stack/lib.sh, testing/cluster/lib.sh).
# shellcheck disable=SC2034 # used by the scripts that source this file
bavs_s3alt_defaults() {
    : "${BAVS_S3ALT_DIR:=$BAVS_REPO_ROOT/target/s3alt}"
    [[ $BAVS_S3ALT_DIR == /* ]] || BAVS_S3ALT_DIR="$PWD/$BAVS_S3ALT_DIR"
    : "${BAVS_S3ALT_PORT:=19300}"
    : "${BAVS_S3ALT_ACCESS_KEY:=bavs-alt-access}"
    : "${BAVS_S3ALT_SECRET_KEY:=bavs-alt-secret-key-0123456789}"
    : "${BAVS_S3ALT_REGION:=us-east-1}"
    : "${BAVS_S3ALT_TIMEOUT:=30}"
    S3ALT_ENV=$BAVS_S3ALT_DIR/s3alt.env
    S3ALT_DATA=$BAVS_S3ALT_DIR/data
    S3ALT_LOG=$BAVS_S3ALT_DIR/versitygw.log
    S3ALT_PID=$BAVS_S3ALT_DIR/versitygw.pid
}

# bavs_s3alt_require_free_port: fail clearly if the port is taken.
bavs_s3alt_require_free_port() {
    local who
    if bavs_port_in_use "$BAVS_S3ALT_PORT"; then
        who=$(bavs_port_owner "$BAVS_S3ALT_PORT")
        bavs_die "versitygw: port $BAVS_S3ALT_PORT on 127.0.0.1 is already in use${who:+ by $who}; stop that process or choose another port with BAVS_S3ALT_PORT"
    fi
}

bavs_s3alt_running() { bavs_pid_alive "$S3ALT_PID" versitygw >/dev/null; }
