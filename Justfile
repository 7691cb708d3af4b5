set shell := ["bash", "-euo", "pipefail", "-c"]

# ---------------------------------------------------------------------------
# Local "real stack" for integration tests: RabbitMQ + MinIO + clamd on
# 127.0.0.1, state in target/stack (or $BAVS_STACK_DIR), connection details in
# target/stack/stack.env. Scripts live in testing/stack/ and also run without
# just (`bash testing/stack/<script>.sh`).
# ---------------------------------------------------------------------------

# Install/cache the stack's tools at pinned versions (apt packages, MinIO built with Go)
provision:
    @bash testing/stack/provision.sh

# Provision, then (re)start a fresh stack with new credentials; writes target/stack/stack.env
stack-up:
    @bash testing/stack/stack-up.sh

# Stop every process of the stack (data and logs are kept until the next stack-up)
stack-down:
    @bash testing/stack/stack-down.sh

# Control one service of the running stack: just stack-service restart rabbitmq
stack-service action service:
    @bash testing/stack/service.sh {{ action }} {{ service }}

# Smoke-test the running stack: clamd detections, end-to-end MinIO -> RabbitMQ event
stack-check:
    @bash testing/stack/check.sh
