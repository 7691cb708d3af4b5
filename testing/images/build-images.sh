#!/usr/bin/env bash
# Builds every container image the real-pod test cluster runs, from this repository and Debian
# packages, without a registry, and writes each as an OCI archive for `ctr images import`
# (load-images.sh):
#
#   localhost/bavs/pause:3.10            sandbox image: Kubernetes' own pause.c, static
#   gcr.io/distroless/cc-debian12:nonroot  runtime base the Dockerfiles name; local equivalent from
#                                        Debian packages; only kept in the private buildah store
#   bucket-av-worker:dev, bucket-av-operator:dev
#                                        worker/Dockerfile, operator/Dockerfile unmodified, with the
#                                        host-built release binaries standing in for the build stage
#   docker.io/clamav/clamav:1.4          the CRD's default sidecar image; local equivalent from
#                                        Debian's ClamAV
#   localhost/bavs/rabbitmq:<v>-management, localhost/bavs/minio:<v>
#                                        what testing/e2e/*.yaml run, with only the image changed
#   localhost/bavs/coredns:<v>           the cluster's CoreDNS (BAVS_COREDNS_BIN, default the binary
#                                        testing/cluster/provision.sh caches), when it is built
#
#   bash testing/images/build-images.sh [--rebuild] [--base-only]
#   bash testing/images/load-images.sh --address <containerd socket>
#
# --base-only builds (or finds cached) everything but the worker and operator images and writes only
# base-images.env (every run writes it): the slow part, which can run while cargo builds the release
# binaries, and what cluster-up needs for the real node (pause, CoreDNS).
#
# Needs root, buildah, mmdebstrap, gcc with static glibc, Go (for the pause.c source, once),
# `cargo build --release --locked -p bucket-av-worker -p bucket-av-operator --bins` done before,
# and the MinIO binary testing/stack/provision.sh caches. Talks to no registry: the only network
# traffic is mmdebstrap fetching Debian packages (from BAVS_DEBIAN_MIRROR) and, once, the Go
# module proxy for k8s.io/kubernetes.
#
# The base images (pause, distroless, clamav, rabbitmq, minio, coredns) are cached as OCI
# archives under ~/.cache/bucket-av-scanner/images/, keyed by a hash of the shell functions and
# files that define them; a warm run only rebuilds the worker and operator images. --rebuild (or
# BAVS_IMAGES_REBUILD=1) ignores the cache, e.g. to pick up Debian security updates.
#
# Environment: BAVS_IMAGES_DIR (output, default <repo>/target/images), BAVS_IMAGE_TAG (worker and
# operator tag and VERSION build-arg, default dev), BAVS_RELEASE_DIR (default
# ${CARGO_TARGET_DIR:-<repo>/target}/release), BAVS_COREDNS_BIN, BAVS_DEBIAN_MIRROR,
# BAVS_DEBIAN_SECURITY_MIRROR, XDG_CACHE_HOME.
set -euo pipefail
# Failures inside $(...) stop the script too (bash leaves them unchecked by default).
shopt -s inherit_errexit

IMAGES_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# provision.sh only defines things when sourced: the pinned MinIO version and its cached binary
# path (BAVS_MINIO_BIN), plus testing/lib.sh (bavs_step, bavs_info, bavs_die, BAVS_REPO_ROOT).
# shellcheck source=testing/stack/provision.sh
source "$IMAGES_SCRIPTS/../stack/provision.sh"
# The cluster's CoreDNS (testing/cluster/provision.sh builds it): packaged when it is there, so
# that every run writes the same base-images.env cluster-up reads.
# shellcheck source=testing/cluster/lib.sh
source "$IMAGES_SCRIPTS/../cluster/lib.sh"
# shellcheck source=testing/cluster/coredns.sh
source "$IMAGES_SCRIPTS/../cluster/coredns.sh"
if [[ -z ${BAVS_COREDNS_BIN:-} && -x $BAVS_COREDNS_DIR/coredns ]]; then
    BAVS_COREDNS_BIN=$BAVS_COREDNS_DIR/coredns
fi

# ---------------------------------------------------------------- settings ----

# Bump when the archive layout or naming changes: every cached image is rebuilt.
IMAGES_FORMAT=1
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${BAVS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${BAVS_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The same suites the machine's apt uses, so images get the same (security) updates as the host.
DEBIAN_SOURCES=(
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE main"
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main"
    "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main"
)

PAUSE_IMAGE=localhost/bavs/pause:3.10
# The FROM of the runtime stage of worker/Dockerfile and operator/Dockerfile.
DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# crds/src/policy.rs default_clamav_image: policies that name no image get this one.
CLAMAV_IMAGE=docker.io/clamav/clamav:1.4
IMAGE_TAG=${BAVS_IMAGE_TAG:-dev}
# The chart's repositories (charts/bucket-av-scanner/values.yaml) with the kind recipes' tag.
# Pods say `bucket-av-worker:dev`; the kubelet asks containerd for the normalised
# docker.io/library/... name, so the archives carry that one.
WORKER_IMAGE=bucket-av-worker:$IMAGE_TAG
OPERATOR_IMAGE=bucket-av-operator:$IMAGE_TAG

CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/bucket-av-scanner
IMAGE_CACHE=$CACHE_ROOT/images
BUILDAH_DIR=$CACHE_ROOT/buildah
OUT_DIR=${BAVS_IMAGES_DIR:-$BAVS_REPO_ROOT/target/images}
RELEASE_DIR=${BAVS_RELEASE_DIR:-${CARGO_TARGET_DIR:-$BAVS_REPO_ROOT/target}/release}
REBUILD=${BAVS_IMAGES_REBUILD:-}
BASE_ONLY=
K8S_GO_MOD=$BAVS_REPO_ROOT/testing/cluster/k8s/go.mod
LOCAL_NOTE="local build from Debian $DEBIAN_SUITE packages by bucket-av-scanner testing/images/build-images.sh, not the upstream image"

# ----------------------------------------------------------------- helpers ----

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# bh ARGS...: buildah on this project's private store. TMPDIR keeps buildah's big temporary
# files (it defaults to /var/tmp) inside that store's directory too.
bh() {
    TMPDIR=$BUILDAH_DIR/tmp buildah --root "$BUILDAH_DIR/root" --runroot "$BUILDAH_DIR/run" \
        --storage-driver overlay "$@"
}

# new_container IMAGE: a working container of IMAGE, its ID in CID. The IDs are also listed in a
# file (new_container may run in a subshell) so that cleanup removes them whatever happens.
new_container() {
    CID=$(bh from --pull=never --quiet "$1") || bavs_die "buildah from $1 failed"
    printf '%s\n' "$CID" >>"$WORK/containers"
}

# run_log LOG CMD...: run CMD with its output in LOG; on failure show LOG's tail and stop.
run_log() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        bavs_fail_with_log "$CURRENT" "$log" "$1 failed"
    fi
}

# cache_key INPUT...: 16 hex digits over the inputs: a shell function (its current definition),
# a file (its contents) or a literal string; plus the format and the Debian sources.
cache_key() {
    local a
    {
        printf '%s\n' "$IMAGES_FORMAT" "$DEBIAN_SUITE" "${DEBIAN_SOURCES[@]}"
        for a; do
            if declare -F -- "$a" >/dev/null; then
                declare -f "$a"
            elif [[ -f $a ]]; then
                sha256sum <"$a"
            else
                printf '%s\n' "$a"
            fi
        done
    } | sha256sum | cut -c1-16
}

# debootstrap_dir DIR VARIANT PACKAGES [MMDEBSTRAP-OPTION...]: a Debian tree in DIR.
debootstrap_dir() {
    local dir=$1 variant=$2 packages=$3
    shift 3
    run_log "$WORK/$CURRENT.mmdebstrap.log" mmdebstrap --variant="$variant" --include="$packages" \
        "$@" "$DEBIAN_SUITE" "$dir" "${DEBIAN_SOURCES[@]}"
}

# The dpkg filters that leave documentation and translations out of the essential-variant trees;
# the copyright files stay (the licences of what the image ships).
DPKG_SLIM=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
)

# trim_tree DIR: what mmdebstrap leaves that has no place in an image: the build host's
# resolv.conf and hostname (the runtime provides both), apt's scaffolding (no apt inside), logs.
trim_tree() {
    local r=$1
    rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
    rm -rf "$r/etc/apt" "$r/var/lib/apt" "$r/var/cache/apt" "$r/var/cache/ldconfig/aux-cache"
    [[ ! -d $r/var/log ]] || find "$r/var/log" -mindepth 1 -type f -delete
    [[ ! -d $r/tmp ]] || find "$r/tmp" -mindepth 1 -delete
    if [[ -d $r/usr/share/doc ]]; then
        find "$r/usr/share/doc" -type f ! -name copyright -delete
        find "$r/usr/share/doc" -depth -mindepth 1 -type d -empty -delete
    fi
    rm -rf "$r/usr/share/man" "$r/usr/share/info" "$r/usr/share/lintian"
}

# add_tree CONTAINER DIR: DIR as one layer, owners and modes as they are (through tar: buildah
# copy would make everything root's). /dev, /proc and /sys stay empty: the runtime mounts them.
add_tree() {
    local c=$1 dir=$2 tar=$WORK/$CURRENT.rootfs.tar
    tar --numeric-owner --xattrs -C "$dir" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tar" .
    bh add --quiet "$c" "$tar" / >/dev/null
    rm -f "$tar"
}

# add_user TREE NAME UID GID HOME: a system user and group fixed at UID:GID, written before the
# packages whose maintainer scripts would otherwise create them with whatever ids are free.
add_user() {
    local r=$1 name=$2 uid=$3 gid=$4 home=$5
    printf '%s:x:%s:\n' "$name" "$gid" >>"$r/etc/group"
    # The shadow files exist once the passwd package is in; its postinst creates them otherwise.
    [ ! -f "$r/etc/gshadow" ] || printf '%s:!::\n' "$name" >>"$r/etc/gshadow"
    printf '%s:x:%s:%s::%s:/usr/sbin/nologin\n' "$name" "$uid" "$gid" "$home" >>"$r/etc/passwd"
    [ ! -f "$r/etc/shadow" ] || printf '%s:*:19000:0:99999:7:::\n' "$name" >>"$r/etc/shadow"
}

# labels DESCRIPTION: LABELS = the `buildah config` options for the labels every image built
# here carries.
labels() {
    LABELS=(--label "org.opencontainers.image.description=$1"
        --label "org.opencontainers.image.source=bucket-av-scanner testing/images/build-images.sh")
}

# run_in IMAGE [buildah-run-option...] -- CMD...: run CMD in a throwaway container of IMAGE,
# without network (a new network namespace with only loopback).
run_in() {
    local image=$1 c opts=()
    shift
    while [[ $1 != -- ]]; do
        opts+=("$1")
        shift
    done
    shift
    new_container "$image"
    c=$CID
    bh run --network none "${opts[@]}" "$c" -- "$@"
    bh rm "$c" >/dev/null
}

# ------------------------------------------------------------------ images ----
# Each build_* function builds its image into the private store and sets BUILT to its name. The
# functions are part of the cache key of their image: changing one rebuilds only that image.

# Kubernetes' own pause container (build/pause/linux/pause.c of the pinned k8s.io/kubernetes
# module), built as upstream builds it: static, -Os, stripped.
build_pause() {
    local c
    gcc -Os -Wall -Werror -static -DVERSION=v3.10-bavs -o "$WORK/pause" "$PAUSE_SRC"
    strip "$WORK/pause"
    new_container scratch
    c=$CID
    bh copy --quiet --chmod 0755 "$c" "$WORK/pause" /pause >/dev/null
    labels "Kubernetes pause (sandbox) container from k8s.io/kubernetes@$K8S_VERSION build/pause/linux/pause.c, $LOCAL_NOTE"
    bh config --entrypoint '["/pause"]' --user 65535:65535 \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "$PAUSE_IMAGE" >/dev/null
    BUILT=$PAUSE_IMAGE
}

# distroless_tree DIR: the files of gcr.io/distroless/cc-debian12, made from Debian packages.
# "cc" is distroless "base" (glibc, libssl3, CA certificates, tzdata, netbase, /etc/passwd with
# root, nobody and nonroot) plus libgcc, libgomp and libstdc++. No shell, no package manager, no
# dpkg database; the package copyright files stay.
distroless_tree() {
    local r=$1 crt
    # extract: unpack the packages and nothing else (no maintainer scripts, no dependencies
    # beyond what apt resolves; their binaries are removed below).
    debootstrap_dir "$r" extract \
        base-files,netbase,tzdata,ca-certificates,libc6,libssl3,libgcc-s1,libgomp1,libstdc++6
    # Every program goes: the packages' own (ldd, openssl, debconf's perl, ...) and usrmerge's
    # /bin and /sbin alike.
    local d
    for d in bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin; do
        [[ -L $r/$d ]] || rm -rf "${r:?}/$d"
        mkdir -p "$r/$d"
        find "$r/$d/" -mindepth 1 -delete
    done
    rm -rf "$r/var/lib/dpkg" "$r/var/cache/debconf" "$r/etc/alternatives" "$r/usr/share/debconf" \
        "$r/usr/share/perl5" "$r/usr/lib/x86_64-linux-gnu/perl-base" "$r/usr/share/perl" \
        "$r/etc/debconf.conf" "$r/etc/dpkg" "$r/etc/ca-certificates" "$r/etc/ca-certificates.conf"
    # The CA bundle update-ca-certificates would write: every certificate ca-certificates ships
    # (all are enabled by default), each ending in a newline.
    mkdir -p "$r/etc/ssl/certs"
    : >"$r/etc/ssl/certs/ca-certificates.crt"
    for crt in "$r"/usr/share/ca-certificates/mozilla/*.crt; do
        # shellcheck disable=SC1003 # sed's "append a newline if missing", not a quote
        sed -e '$a\' "$crt" >>"$r/etc/ssl/certs/ca-certificates.crt"
    done
    [[ -s $r/etc/ssl/certs/ca-certificates.crt ]] || bavs_die "no CA certificates in the ca-certificates package"
    rm -rf "$r/usr/share/ca-certificates"
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
    cat >"$r/etc/nsswitch.conf" <<'EOF'
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
EOF
    mkdir -p "$r/home/nonroot" "$r/root" "$r/tmp"
    chown 65532:65532 "$r/home/nonroot"
    chmod 0700 "$r/root" "$r/home/nonroot"
    chmod 1777 "$r/tmp"
    # The loader cache; glibc also finds the multiarch directories without it.
    if [[ -f $r/etc/ld.so.conf ]]; then ldconfig -r "$r"; fi
    trim_tree "$r"
}

build_distroless() {
    local c
    distroless_tree "$WORK/distroless"
    new_container scratch
    c=$CID
    add_tree "$c" "$WORK/distroless"
    labels "Equivalent of $DISTROLESS_IMAGE (glibc, libssl3, libgcc, libstdc++, CA certificates, tzdata, nonroot 65532, no shell); $LOCAL_NOTE"
    bh config --user 65532:65532 --workingdir /home/nonroot \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "$DISTROLESS_IMAGE" >/dev/null
    BUILT=$DISTROLESS_IMAGE
}

# The ClamAV image the operator's sidecar runs: clamd, freshclam and clamdscan (the sidecar's
# exec probe) on PATH, user clamav = 100:101 as in the official clamav/clamav image, its
# directories owned by that user, no signatures (a ConfigMap or freshclam provides them).
build_clamav() {
    local r=$WORK/clamav c version
    debootstrap_dir "$r" essential clamav-daemon,clamav-freshclam,clamdscan,ca-certificates \
        "${DPKG_SLIM[@]}" \
        --essential-hook="$(declare -f add_user); add_user \"\$1\" clamav 100 101 /var/lib/clamav"
    [[ $(stat -c %u:%g "$r/var/lib/clamav") == 100:101 ]] ||
        bavs_die "clamav: /var/lib/clamav is not owned by 100:101 in the new tree"
    version=$(dpkg-query --admindir="$r/var/lib/dpkg" -W -f '${Version}' clamav-daemon)
    rm -f "$r"/var/lib/clamav/*
    mkdir -p "$r/run/clamav" "$r/var/log/clamav" "$r/var/lock"
    chown 100:101 "$r/run/clamav" "$r/var/log/clamav" "$r/var/lib/clamav"
    trim_tree "$r"
    new_container scratch
    c=$CID
    add_tree "$c" "$r"
    # No entrypoint: the operator names the command (clamd, freshclam); the default runs clamd
    # with Debian's configuration.
    labels "ClamAV $version (clamd, freshclam, clamdscan) from Debian's clamav-daemon, with the official clamav/clamav image's user 100:101 and paths; no signatures; $LOCAL_NOTE"
    bh config --user 100:101 --workingdir /var/lib/clamav --cmd '["clamd", "--foreground"]' \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --port 3310/tcp \
        --label "org.opencontainers.image.version=$version" \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "$CLAMAV_IMAGE" >/dev/null
    BUILT=$CLAMAV_IMAGE
}

# clamd in the new image, as the sidecar runs it (uid 100:101, read-only signature directory,
# config in /etc/bucket-av/clamav), with the project's test signatures: EICAR must be FOUND and a
# clean file OK.
check_clamav() {
    local d=$WORK/clamav-check out
    mkdir -p "$d/db" "$d/conf" "$d/data"
    cp "$BAVS_REPO_ROOT"/testing/signatures/bavs-test.* "$d/db/"
    cat >"$d/conf/clamd.conf" <<'EOF'
Foreground yes
DatabaseDirectory /var/lib/clamav
TemporaryDirectory /tmp
PidFile /tmp/clamd.pid
LocalSocket /tmp/clamd.sock
EOF
    # The EICAR test file: 68 bytes, nothing else.
    # shellcheck disable=SC2016 # literal bytes
    printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >"$d/data/eicar"
    printf 'hello\n' >"$d/data/clean"
    chmod -R a+rX "$d"
    # shellcheck disable=SC2016 # expanded by the shell in the container
    out=$(run_in "$CLAMAV_IMAGE" --user 100:101 -v "$d/db:/var/lib/clamav:ro" \
        -v "$d/conf:/etc/bucket-av/clamav:ro" -v "$d/data:/data:ro" -- sh -c '
        clamd --foreground --config-file=/etc/bucket-av/clamav/clamd.conf & pid=$!
        i=0; until [ -S /tmp/clamd.sock ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
        id -u; id -g
        clamdscan --config-file=/etc/bucket-av/clamav/clamd.conf --ping=1
        clamdscan --config-file=/etc/bucket-av/clamav/clamd.conf --stream --no-summary /data/eicar /data/clean
        freshclam --version
        kill $pid; wait $pid' 2>&1) || true
    printf '%s\n' "$out" >"$WORK/clamav-check.log"
    if ! { grep -qx 100 <<<"$out" && grep -q 'PONG' <<<"$out" &&
        grep -q 'eicar: Eicar-Test-Signature.UNOFFICIAL FOUND' <<<"$out" &&
        grep -q 'clean: OK' <<<"$out" && grep -q '^ClamAV ' <<<"$out"; }; then
        bavs_fail_with_log clamav "$WORK/clamav-check.log" "clamd in $CLAMAV_IMAGE did not detect EICAR with testing/signatures"
    fi
}

# RabbitMQ from Debian with the management (and prometheus) plugin, the official image's
# contract as testing/e2e/rabbitmq.yaml uses it: RABBITMQ_DEFAULT_USER/PASS, AMQP 5672,
# management 15672, data in /var/lib/rabbitmq, rabbitmq-diagnostics on PATH for the probe; runs
# as rabbitmq = 999:999 (the official image's ids), never as root.
build_rabbitmq() {
    local r=$WORK/rabbitmq c version
    debootstrap_dir "$r" essential rabbitmq-server "${DPKG_SLIM[@]}" \
        --essential-hook="$(declare -f add_user); add_user \"\$1\" rabbitmq 999 999 /var/lib/rabbitmq"
    version=$(dpkg-query --admindir="$r/var/lib/dpkg" -W -f '${Version}' rabbitmq-server)
    version=${version#*:}
    version=${version%%-*}
    # The official image's settings (10-defaults.conf, management image): guest may log in
    # from anywhere, logs go to the console only (the root filesystem may be read-only).
    mkdir -p "$r/etc/rabbitmq"
    cat >"$r/etc/rabbitmq/rabbitmq.conf" <<'EOF'
# bavs local image: the settings of the official rabbitmq:*-management image.
loopback_users.guest = false
listeners.tcp.default = 5672
management.tcp.port = 15672
log.console = true
log.file = false
EOF
    printf '[rabbitmq_management,rabbitmq_prometheus].\n' >"$r/etc/rabbitmq/enabled_plugins"
    install -m 0755 "$IMAGES_SCRIPTS/rabbitmq-entrypoint.sh" "$r/usr/local/bin/docker-entrypoint.sh"
    rm -rf "${r:?}"/var/lib/rabbitmq/* "$r"/var/log/rabbitmq/*
    mkdir -p "$r/var/lib/rabbitmq" "$r/var/log/rabbitmq"
    chown 999:999 "$r/var/lib/rabbitmq" "$r/var/log/rabbitmq"
    chmod 0750 "$r/var/lib/rabbitmq"
    trim_tree "$r"
    new_container scratch
    c=$CID
    add_tree "$c" "$r"
    # /usr/lib/rabbitmq/bin first: Debian's /usr/sbin/rabbitmq-* wrappers redirect the server's
    # output to files and su to rabbitmq; the scripts behind them run as whoever calls them.
    labels "RabbitMQ $version with the management plugin from Debian's rabbitmq-server, honouring RABBITMQ_DEFAULT_USER/PASS like docker.io/library/rabbitmq; $LOCAL_NOTE"
    bh config --user 999:999 --workingdir /var/lib/rabbitmq \
        --env PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env HOME=/var/lib/rabbitmq --env RABBITMQ_LOGS=- \
        --entrypoint '["/usr/local/bin/docker-entrypoint.sh"]' --cmd '["rabbitmq-server"]' \
        --port 5672/tcp --port 15672/tcp --port 15692/tcp \
        --label "org.opencontainers.image.version=$version" \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "localhost/bavs/rabbitmq:$version-management" >/dev/null
    BUILT=localhost/bavs/rabbitmq:$version-management
}

# The server starts as the image's user with RABBITMQ_DEFAULT_USER/PASS, the probe command of
# testing/e2e/rabbitmq.yaml passes and the default user authenticates.
check_rabbitmq() {
    local image=$1 d=$WORK/rabbitmq-check out
    mkdir -p "$d"
    chmod 0777 "$d" # like an emptyDir
    # shellcheck disable=SC2016 # expanded by the shell in the container
    out=$(run_in "$image" -v "$d:/var/lib/rabbitmq" --hostname rabbitmq \
        -e RABBITMQ_DEFAULT_USER=bavs -e RABBITMQ_DEFAULT_PASS=bavs-image-check -- sh -c '
        docker-entrypoint.sh rabbitmq-server >/tmp/server.log 2>&1 & pid=$!
        i=0
        until rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 60 ] || { echo "not ready after 60 tries"; break; }; sleep 1
        done
        id -u
        rabbitmq-diagnostics -q check_port_connectivity && echo PORTS-OK
        rabbitmqctl -q authenticate_user bavs bavs-image-check && echo AUTH-OK
        rabbitmq-plugins -q list --enabled --minimal
        rabbitmqctl -q stop >/dev/null 2>&1; wait $pid
        tail -n 20 /tmp/server.log' 2>&1) || true
    printf '%s\n' "$out" >"$WORK/rabbitmq-check.log"
    if ! { grep -qx 999 <<<"$out" && grep -q PORTS-OK <<<"$out" && grep -q AUTH-OK <<<"$out" &&
        grep -qx rabbitmq_management <<<"$out"; }; then
        bavs_fail_with_log rabbitmq "$WORK/rabbitmq-check.log" "RabbitMQ in $image did not start as expected"
    fi
    rm -rf "$d"
}

# MinIO (the binary the local stack runs, testing/stack/provision.sh) on the distroless base:
# `minio` is the entrypoint, so testing/e2e/minio.yaml's args (server /data ...) work as with
# the official image. MinIO is AGPL-3.0: it runs as its own program in its own image.
build_minio() {
    local c image=localhost/bavs/minio:$MINIO_VERSION
    new_container "$DISTROLESS_IMAGE"
    c=$CID
    bh copy --quiet --chmod 0755 "$c" "$BAVS_MINIO_BIN" /usr/bin/minio >/dev/null
    labels "MinIO server $MINIO_VERSION built from github.com/minio/minio by testing/stack/provision.sh, on the local distroless-like base; not the upstream image"
    bh config --entrypoint '["/usr/bin/minio"]' --workingdir / \
        --port 9000/tcp --port 9001/tcp \
        --label "org.opencontainers.image.version=$MINIO_VERSION" \
        --label "org.opencontainers.image.licenses=AGPL-3.0-only" \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "$image" >/dev/null
    BUILT=$image
}

# CoreDNS (a binary someone built, BAVS_COREDNS_BIN) on the distroless base, as /coredns like
# the upstream image.
build_coredns() {
    local c version image
    version=$("$BAVS_COREDNS_BIN" -version 2>/dev/null | sed -n 's/^CoreDNS-\([0-9][0-9A-Za-z.+-]*\).*/\1/p' | head -n 1)
    image=localhost/bavs/coredns:${version:-dev}
    new_container "$DISTROLESS_IMAGE"
    c=$CID
    bh copy --quiet --chmod 0755 "$c" "$BAVS_COREDNS_BIN" /coredns >/dev/null
    labels "CoreDNS ${version:-dev} from $BAVS_COREDNS_BIN on the local distroless-like base; not the upstream image"
    bh config --entrypoint '["/coredns"]' --user 65532:65532 --workingdir / \
        --port 53/udp --port 53/tcp \
        "${LABELS[@]}" \
        "$c"
    bh commit --quiet --rm "$c" "$image" >/dev/null
    BUILT=$image
}

# build_app NAME IMAGE: <name>/Dockerfile, unmodified, with the release binary as the `build`
# stage: a named build context called `build` replaces that stage, so `COPY --from=build
# /out/<bin>` reads <context>/out/<bin> and the Rust stage (a rust:*-bookworm image from a
# registry) never runs. The runtime stage is exactly what users get.
build_app() {
    local name=$1 image=$2 bin=bucket-av-$1 ctx=$WORK/ctx-$1
    mkdir -p "$ctx/out"
    cp "$RELEASE_DIR/$bin" "$ctx/out/$bin"
    run_log "$WORK/$name.bud.log" bh bud --pull=never --quiet --layers=false \
        --build-context "build=$ctx" --build-arg "VERSION=$IMAGE_TAG" \
        --label "org.opencontainers.image.description=$bin from $name/Dockerfile with the host-built release binary, on the local distroless-like base ($LOCAL_NOTE)" \
        -f "$BAVS_REPO_ROOT/$name/Dockerfile" -t "$image" "$BAVS_REPO_ROOT"
    APP_VERSION=$(run_in "$image" -- "/usr/local/bin/$bin" --version 2>&1) ||
        bavs_die "$bin --version failed in $image: $APP_VERSION"
}

# ------------------------------------------------------------ the pipeline ----

# full_name NAME: the name containerd knows an image by (what the kubelet asks for).
full_name() {
    local n=$1 first=${1%%/*}
    if [[ $n != */* ]]; then
        n=docker.io/library/$n
    elif [[ $first != *[.:]* && $first != localhost ]]; then
        n=docker.io/$n
    fi
    printf '%s\n' "$n"
}

ENV_LINES=()
# write_env FILE: the images recorded so far, atomically.
write_env() {
    {
        printf '# Written by testing/images/build-images.sh: NAME = as manifests name the image, _REF = the name\n'
        printf '# containerd gives it on import, _ARCHIVE = OCI archive for ctr -n k8s.io images import.\n'
        printf '%s\n' "${ENV_LINES[@]}"
    } >"$1.tmp"
    mv -f "$1.tmp" "$1"
}

# record VAR NAME ARCHIVE: an images.env entry and the archive in the output directory.
record() {
    local var=$1 name=$2 archive=$3 short=$4 dest=$OUT_DIR/$4.oci.tar
    rm -f "$dest"
    ln "$archive" "$dest" 2>/dev/null || cp "$archive" "$dest"
    ENV_LINES+=("$var=$name" "${var}_REF=$(full_name "$name")" "${var}_ARCHIVE=$dest")
}

# report SHORT STATUS START NAME: one line per image.
report() {
    printf '%-10s %-7s %4ss  %s\n' "$1" "$2" "$((SECONDS - $3))" "$4"
}

# push IMAGE ARCHIVE: the image as an OCI archive whose reference is its full name (the name
# `ctr images import` gives it), written atomically.
push() {
    local image=$1 archive=$2
    bh push --quiet "$image" "oci-archive:$archive.tmp:$(full_name "$image")" >/dev/null
    mv -f "$archive.tmp" "$archive"
}

# cached_image SHORT VAR BUILD_FN CHECK_FN KEY_INPUT...: the image from the cache when its key
# matches, otherwise built (and checked) and cached; then recorded. VAR empty: not recorded
# (the distroless base). The built image stays in the store only for the distroless base.
cached_image() {
    local short=$1 var=$2 build=$3 check=$4 start=$SECONDS key archive name status=cached
    shift 4
    CURRENT=$short
    key=$(cache_key "$build" "$check" "$@")
    archive=$IMAGE_CACHE/$short-$key.oci.tar
    if [[ -n $REBUILD || ! -s $archive || ! -s $archive.name || ! -s $archive.id ]]; then
        status=built
        "$build"
        name=$BUILT
        if [[ -n $check ]]; then "$check" "$name"; fi
        push "$name" "$archive"
        printf '%s\n' "$name" >"$archive.name"
        bh inspect --type image --format '{{.FromImageID}}' "$name" >"$archive.id"
        # Older versions of this image in the cache are no longer reachable.
        find "$IMAGE_CACHE" -maxdepth 1 -name "$short-*" ! -name "$short-$key.*" -delete
        [[ $short == distroless ]] || bh rmi "$name" >/dev/null
    fi
    name=$(<"$archive.name")
    if [[ $short == distroless ]]; then
        # FROM of the Dockerfiles and of the MinIO/CoreDNS images: must be in the store, as
        # this exact build.
        if [[ $(bh inspect --type image --format '{{.FromImageID}}' "$name" 2>/dev/null) != "$(<"$archive.id")" ]]; then
            bh pull --quiet "oci-archive:$archive" >/dev/null
            bh tag "$(<"$archive.id")" "$name"
        fi
        DISTROLESS_KEY=$key
    fi
    [[ -z $var ]] || record "$var" "$name" "$archive" "$short"
    report "$short" "$status" "$start" "$name"
}

# app_image SHORT VAR IMAGE: worker or operator, built on every run.
app_image() {
    local short=$1 var=$2 image=$3 start=$SECONDS version
    CURRENT=$short
    build_app "$short" "$(full_name "$image")"
    version=$APP_VERSION
    push "$(full_name "$image")" "$WORK/$short.oci.tar"
    bh rmi "$(full_name "$image")" >/dev/null
    mkdir -p "$OUT_DIR"
    mv -f "$WORK/$short.oci.tar" "$OUT_DIR/$short.oci.tar"
    ENV_LINES+=("$var=$image" "${var}_REF=$(full_name "$image")" "${var}_ARCHIVE=$OUT_DIR/$short.oci.tar")
    report "$short" built "$start" "$image ($version)"
}

# The one file buildah writes outside --root/--runroot whatever the options (containers/image
# puts it there for root): its blob-info cache, only a cache. Removed at exit when this run
# created it, with the directories when nothing else is in them.
BLOB_INFO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
BLOB_INFO_CACHE_EXISTED=
[[ ! -e $BLOB_INFO_CACHE ]] || BLOB_INFO_CACHE_EXISTED=1
cleanup() {
    local c
    if [[ -n ${WORK:-} && -f $WORK/containers ]]; then
        while read -r c; do
            bh rm "$c" >/dev/null 2>&1 || true
        done <"$WORK/containers"
    fi
    [[ -z ${WORK:-} ]] || rm -rf "$WORK"
    if [[ -z $BLOB_INFO_CACHE_EXISTED && -e $BLOB_INFO_CACHE ]]; then
        rm -f "$BLOB_INFO_CACHE"
        rmdir "${BLOB_INFO_CACHE%/*}" /var/lib/containers 2>/dev/null || true
    fi
}

preflight() {
    local missing=() tool
    [[ $(id -u) == 0 ]] || bavs_die "run as root: mmdebstrap and buildah's overlay store need it"
    for tool in buildah mmdebstrap gcc strip dpkg-query ldconfig; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        bavs_apt_install buildah mmdebstrap gcc libc6-dev binutils
    fi
    [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || bavs_apt_install libc6-dev
    local bin
    if [[ -z $BASE_ONLY ]]; then
        for bin in bucket-av-worker bucket-av-operator; do
            [[ -x $RELEASE_DIR/$bin ]] || bavs_die "$RELEASE_DIR/$bin is missing; build it first:
  cargo build --release --locked -p bucket-av-worker -p bucket-av-operator --bins
  (or set BAVS_RELEASE_DIR to a directory holding both binaries, or pass --base-only)"
        done
    fi
    # The MinIO image packages the stack's binary: provision it (cached after the first build).
    [[ -x $BAVS_MINIO_BIN ]] || bash "$IMAGES_SCRIPTS/../stack/provision.sh"
    [[ -x $BAVS_MINIO_BIN ]] || bavs_die "no MinIO binary at $BAVS_MINIO_BIN after testing/stack/provision.sh"
    if [[ -n ${BAVS_COREDNS_BIN:-} && ! -x $BAVS_COREDNS_BIN ]]; then
        bavs_die "BAVS_COREDNS_BIN=$BAVS_COREDNS_BIN is not an executable"
    fi
    K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" {print $2}' "$K8S_GO_MOD" | head -n 1)
    [[ -n $K8S_VERSION ]] || bavs_die "no k8s.io/kubernetes requirement in $K8S_GO_MOD"
    local modcache
    modcache=$(go env GOMODCACHE 2>/dev/null || true)
    PAUSE_SRC=${modcache:-$HOME/go/pkg/mod}/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
    if [[ ! -f $PAUSE_SRC ]]; then
        command -v go >/dev/null || bavs_die "pause.c needs the k8s.io/kubernetes module and Go is not on PATH; install Go (https://go.dev/dl)"
        bavs_step "downloading k8s.io/kubernetes@$K8S_VERSION (pause.c) from the Go module proxy"
        (cd "$(dirname "$K8S_GO_MOD")" && GOWORK=off go mod download k8s.io/kubernetes) ||
            bavs_die "go mod download k8s.io/kubernetes failed in $(dirname "$K8S_GO_MOD")"
        [[ -f $PAUSE_SRC ]] || bavs_die "$PAUSE_SRC is still missing after go mod download"
    fi
}

main() {
    local arg
    for arg; do
        case $arg in
            -h | --help)
                usage
                return
                ;;
            --rebuild) REBUILD=1 ;;
            --base-only) BASE_ONLY=1 ;;
            *) bavs_die "unknown argument: $arg (see --help)" ;;
        esac
    done
    preflight
    mkdir -p "$IMAGE_CACHE" "$BUILDAH_DIR/tmp" "$OUT_DIR"
    # One run at a time per cache: they share the store and the archives.
    exec 9>"$IMAGE_CACHE/.lock"
    flock -n 9 || {
        bavs_info "another build-images.sh holds $IMAGE_CACHE/.lock; waiting"
        flock 9
    }
    trap cleanup EXIT
    WORK=$(mktemp -d "$BUILDAH_DIR/tmp/work.XXXXXX")
    local total=$SECONDS
    bavs_step "building images into $OUT_DIR (cache: $IMAGE_CACHE)"
    cached_image pause BAVS_IMAGE_PAUSE build_pause "" "$PAUSE_SRC" "$(gcc --version | head -n 1)"
    cached_image distroless "" build_distroless "" distroless_tree debootstrap_dir trim_tree add_tree labels
    cached_image clamav BAVS_IMAGE_CLAMAV build_clamav check_clamav \
        debootstrap_dir trim_tree add_tree add_user labels "${DPKG_SLIM[@]}"
    cached_image rabbitmq BAVS_IMAGE_RABBITMQ build_rabbitmq check_rabbitmq \
        debootstrap_dir trim_tree add_tree add_user labels "${DPKG_SLIM[@]}" "$IMAGES_SCRIPTS/rabbitmq-entrypoint.sh"
    cached_image minio BAVS_IMAGE_MINIO build_minio "" "$DISTROLESS_KEY" "$BAVS_MINIO_BIN" "$MINIO_VERSION" labels
    if [[ -n ${BAVS_COREDNS_BIN:-} ]]; then
        cached_image coredns BAVS_IMAGE_COREDNS build_coredns "" "$DISTROLESS_KEY" "$BAVS_COREDNS_BIN" labels
    else
        printf '%-10s %-7s %4s   %s\n' coredns skipped - "BAVS_COREDNS_BIN is not set (a CoreDNS binary to put into localhost/bavs/coredns)"
    fi
    bh rmi --prune >/dev/null 2>&1 || true
    # The base images on their own: what cluster-up needs for the real node (pause, CoreDNS).
    write_env "$OUT_DIR/base-images.env"
    if [[ -n $BASE_ONLY ]]; then
        bavs_step "base images done in $((SECONDS - total))s (--base-only: $OUT_DIR/base-images.env; images.env unchanged)"
        return
    fi
    app_image worker BAVS_IMAGE_WORKER "$WORKER_IMAGE"
    app_image operator BAVS_IMAGE_OPERATOR "$OPERATOR_IMAGE"
    bh rmi --prune >/dev/null 2>&1 || true
    write_env "$OUT_DIR/images.env"
    bavs_step "done in $((SECONDS - total))s: $OUT_DIR/images.env; load with: bash testing/images/load-images.sh --address <containerd socket>"
}

main "$@"
