#!/usr/bin/env bash
# Run rabbitmqctl against the running local test stack's node, e.g.
#
#   bash testing/stack/rabbitmqctl.sh eval 'application:get_env(rabbit, consumer_timeout).'
#
# The stack is found through BAVS_STACK_DIR (default <repo>/target/stack). Tests use it to
# change broker settings at run time (see Stack::rabbitmqctl in testing/src/stack.rs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testing/stack/lib.sh
. "$here/lib.sh"

bavs_load_stack || bavs_die "no stack in $BAVS_STACK_DIR (no stack.env); run testing/stack/stack-up.sh first"
bavs_rmq rabbitmqctl "$@"
