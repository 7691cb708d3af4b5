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

# Install/cache the reference Standard Webhooks verifier (PyPI standardwebhooks in a venv) the webhook tests check with
provision-webhook-verifier:
    @bash testing/webhook-verifier/provision.sh

# Build/cache KEDA (operator, metrics API server, CRDs) from its Go module, for the KEDA autoscaling tests
provision-keda:
    @bash testing/keda/provision.sh

# Build/cache the control plane's tools (Kubernetes, etcd, kwok from their Go modules)
cluster-provision:
    @bash testing/cluster/provision.sh

# Start a fresh local control plane; writes target/cluster/cluster.env and kubeconfig
cluster-up:
    @bash testing/cluster/cluster-up.sh

# Stop the control plane (data and logs are kept until the next cluster-up)
cluster-down:
    @bash testing/cluster/cluster-down.sh

# ---------------------------------------------------------------------------
# The two commands of the README, and the benchmark
# ---------------------------------------------------------------------------

# Everything at once: lints, unit tests, and integration tests against a fresh real stack
test:
    @bash testing/run-tests.sh

# The quick check without services: formatting, lints (the service suites included) and the tests that need no stack
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked --features services -- -D warnings
    cargo test --workspace --locked

# Write the BucketScanPolicy CRD from its Rust types (crdgen) to crds/ and to the Helm chart's crds/
generate:
    #!/usr/bin/env bash
    set -euo pipefail
    yaml=$(mktemp)
    trap 'rm -f "$yaml"' EXIT
    cargo run --locked -q --bin crdgen >"$yaml"
    cp "$yaml" crds/bucketscanpolicy.yaml
    cp "$yaml" charts/bucket-av-scanner/crds/bucketscanpolicy.yaml
    echo "wrote crds/bucketscanpolicy.yaml and charts/bucket-av-scanner/crds/bucketscanpolicy.yaml"

# The whole system on a clean file and EICAR, as real pods on the local cluster's real node: the
# chart's operator image and the workers with their clamd sidecar, built from the Dockerfiles
# (--keep-running: leave everything up until Ctrl-C)
demo *flags:
    @bash testing/cluster/cluster-up.sh
    @cargo build --locked --release -p bucket-av-worker -p bucket-av-operator --bins
    @bash testing/images/build-images.sh
    @bash testing/images/load-images.sh --address "$(sed -n 's/^BAVS_CONTAINERD_SOCK=//p' target/cluster/cluster.env)"
    @cargo build --locked --workspace --features services --bins
    @BAVS_E2E_IMAGES=target/images/images.env target/debug/demo {{ flags }}
    @echo "The cluster keeps running (target/cluster/cluster.env); stop it with: just cluster-down"

# Starts the stack and the control plane, builds the binaries (as `just test` does) and runs one
# of testing/src/bin against them: what soak and faults share
[private]
on-local-system bin *flags:
    @bash testing/stack/stack-up.sh
    @bash testing/cluster/cluster-up.sh
    @cargo build --locked --workspace --features services --bins
    @WORKER_LOG=warn OPERATOR_LOG=warn target/debug/{{ bin }} {{ flags }}
    @echo "The stack and the control plane keep running (target/stack/stack.env, target/cluster/cluster.env);"
    @echo "stop them with: just stack-down cluster-down"

# Measure the worker against raw clamd and MinIO's ceilings on the same machine and bytes (--pin-minio: MinIO on a core of its own); see BENCHMARKS.md
bench-worker *flags:
    @BAVS_CLAMD_STREAM_MAX_LENGTH=1100M bash testing/stack/stack-up.sh
    @cargo build --release --locked -p bucket-av-worker -p bucket-av-testing --bins
    @WORKER_LOG=warn target/release/bench-worker --worker target/release/bucket-av-worker {{ flags }}

# Measure coverage: a sweep with nothing to do and a backfill, against baselines of the same run (--pin-minio as above); see BENCHMARKS.md
bench-coverage *flags:
    @bash testing/stack/stack-up.sh
    @BAVS_REAL_NODE=0 bash testing/cluster/cluster-up.sh
    @cargo build --release --locked -p bucket-av-worker -p bucket-av-operator -p bucket-av-testing --bins
    @WORKER_LOG=warn OPERATOR_LOG=warn target/release/bench-coverage {{ flags }}

# Format the code
fmt:
    cargo fmt --all

# ---------------------------------------------------------------------------
# kind (where Docker is available; not on the project's own machines, see testing/kind/README.md):
# the images built by docker and the real-pod suite on a kind cluster. CI: .github/workflows/kind-e2e.yml.
# ---------------------------------------------------------------------------

# Create the kind cluster of kind-config.yaml (one control plane, two workers)
kind-up:
    kind create cluster --config kind-config.yaml --wait 180s

# Build the operator and worker images and load them into the kind cluster (tag: dev)
kind-images tag="dev":
    docker build -f operator/Dockerfile --build-arg VERSION={{ tag }} -t bucket-av-operator:{{ tag }} .
    docker build -f worker/Dockerfile --build-arg VERSION={{ tag }} -t bucket-av-worker:{{ tag }} .
    kind load docker-image --name bucket-av-scanner bucket-av-operator:{{ tag }} bucket-av-worker:{{ tag }}

# The real-pod suite (testing/tests/real_pods.rs, as `just test` runs it on the local node) on kind
kind-e2e tag="dev":
    @BAVS_KIND_IMAGE_TAG={{ tag }} bash testing/kind/e2e.sh

# Delete the kind cluster
kind-down:
    kind delete cluster --name bucket-av-scanner

# Flags (defaults): --duration 5m --rate 20 --infected-every 10 --workers 2 --size 1K-64K; see BENCHMARKS.md
# Sustained uploads through the whole system (operator and workers as host processes, as their Deployments describe them); checks every verdict, reports worker and operator RSS
soak *flags: (on-local-system "soak" flags)

# Flags (defaults): --uploads 10000 --rate 25 --rounds 3 --outage 8s --workers 2; see BENCHMARKS.md
# Uploads while every part fails in turn (webhook, clamd, RabbitMQ, MinIO, a worker, the operator); checks every verdict
faults *flags: (on-local-system "faults" flags)
