#!/usr/bin/env bash
# Control one service of a running local test stack, reusing its config,
# credentials and data (MinIO data + event queue_dir, RabbitMQ mnesia):
#
#   bash testing/stack/service.sh {start|stop|restart|status} {rabbitmq|minio|clamd|all}
#
# The stack is found through BAVS_STACK_DIR (default <repo>/target/stack) and
# its stack.env. `start` returns once the service is ready (same checks as
# stack-up); `stop` signals only the PID recorded in the service's pid file.
# `status` exits 0 when the service runs, 3 when it does not.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/stack/lib.sh
. "$here/lib.sh"

usage() {
    echo "usage: $0 {start|stop|restart|status} {rabbitmq|minio|clamd|all}" >&2
    exit 2
}
(($# == 2)) || usage
action=$1 service=$2
case $action in start | stop | restart | status) ;; *) usage ;; esac
case $service in rabbitmq | minio | clamd | all) ;; *) usage ;; esac

bavs_load_stack || bavs_die "no stack in $BAVS_STACK_DIR (no stack.env); run testing/stack/stack-up.sh first"

status_of() {
    case $1 in
        rabbitmq) bavs_status_line rabbitmq "$RMQ_PID" beam ;;
        minio) bavs_status_line minio "$MINIO_PID" minio ;;
        clamd) bavs_status_line clamd "$CLAMD_PID" clamd ;;
    esac
}

run() {
    local action=$1 svc=$2 t=$SECONDS
    case $action in
        start)
            "bavs_${svc}_start"
            echo "$svc started ($((SECONDS - t))s)"
            ;;
        stop)
            "bavs_${svc}_stop"
            echo "$svc stopped ($((SECONDS - t))s)"
            ;;
        restart)
            "bavs_${svc}_stop"
            "bavs_${svc}_start"
            echo "$svc restarted ($((SECONDS - t))s)"
            ;;
        status) status_of "$svc" ;;
    esac
}

if [[ $service == all ]]; then
    rc=0
    case $action in
        stop) order=(minio clamd rabbitmq) ;;
        *) order=(rabbitmq clamd minio) ;;
    esac
    if [[ $action == restart ]]; then
        for s in minio clamd rabbitmq; do run stop "$s"; done
        for s in rabbitmq clamd minio; do run start "$s"; done
        exit 0
    fi
    for s in "${order[@]}"; do run "$action" "$s" || rc=3; done
    exit "$rc"
fi

if [[ $action == status ]]; then
    status_of "$service" || exit 3
else
    run "$action" "$service"
fi
