#!/bin/sh
# Entrypoint of the local RabbitMQ image (localhost/bavs/rabbitmq:*-management), built from
# Debian's rabbitmq-server by testing/images/build-images.sh. It gives the image the part of the
# official docker.io/library/rabbitmq contract that testing/e2e/rabbitmq.yaml relies on:
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS (and _VHOST) create the first user of a new node,
# and the server runs in the foreground as the image's non-root user with logs on stdout.
#
# The credentials go into a config file on the data volume (/var/lib/rabbitmq, the rabbitmq
# user's home, where the Erlang cookie and the database live too): that is the one place the
# manifest makes writable, so the image also works with a read-only root filesystem.
# RabbitMQ applies default_user/default_pass only when it creates a new database, exactly like
# the official image.
set -eu

data=/var/lib/rabbitmq
generated=${RABBITMQ_CONFIG_FILES:-$data/conf.d}

if [ "${1:-}" = rabbitmq-server ]; then
    if ! mkdir -p "$generated" 2>/dev/null || ! [ -w "$generated" ]; then
        echo "error: $generated is not writable by uid $(id -u); mount a writable volume at $data (an emptyDir works)" >&2
        exit 1
    fi
    conf=$generated/10-default-user.conf
    rm -f "$conf"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] || [ -n "${RABBITMQ_DEFAULT_PASS:-}" ] || [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
        # Written with umask 077: the file holds a password.
        (
            umask 077
            {
                echo "# Written by the image's entrypoint from RABBITMQ_DEFAULT_* at container start."
                [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
                [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
                [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
            } >"$conf"
        )
    fi
    # The password stays out of the environment of the server and everything it starts.
    unset RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS RABBITMQ_DEFAULT_VHOST
    export RABBITMQ_CONFIG_FILES="$generated"
fi

# As the official image does: long node names when the host name is a fully qualified one.
if [ -z "${RABBITMQ_USE_LONGNAME:-}" ] && [ "$(hostname)" != "$(hostname -s)" ]; then
    export RABBITMQ_USE_LONGNAME=true
fi

exec "$@"
