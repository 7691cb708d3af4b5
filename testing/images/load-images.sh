#!/usr/bin/env bash
# Imports every image build-images.sh wrote (the archives listed in images.env) into a containerd,
# in the namespace the CRI plugin (and so the kubelet) uses, and checks each is then listed under
# the name pods ask for. No registry: pods use these images with imagePullPolicy Never or
# IfNotPresent.
#
#   bash testing/images/load-images.sh --address /path/to/containerd.sock [--namespace k8s.io]
#                                      [--images-env FILE]
#
# --images-env defaults to ${BAVS_IMAGES_DIR:-<repo>/target/images}/images.env. Needs `ctr`
# (Debian package containerd) and access to the socket (root).
set -euo pipefail

# shellcheck source=testing/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
    local address="" namespace=k8s.io env_file=${BAVS_IMAGES_DIR:-$BAVS_REPO_ROOT/target/images}/images.env
    while (($#)); do
        case $1 in
            --address) address=${2:?--address needs the containerd socket path} && shift ;;
            --namespace) namespace=${2:?--namespace needs a name} && shift ;;
            --images-env) env_file=${2:?--images-env needs a file} && shift ;;
            -h | --help)
                usage
                return
                ;;
            *) bavs_die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    [[ -n $address ]] || bavs_die "which containerd? pass --address <socket> (e.g. the cluster's private containerd.sock)"
    [[ -S $address ]] || bavs_die "$address is not a socket: is that containerd running?"
    command -v ctr >/dev/null || bavs_die "ctr is missing: apt-get install -y --no-install-recommends containerd"
    [[ -f $env_file ]] || bavs_die "$env_file is missing: run bash testing/images/build-images.sh first"

    # images.env: BAVS_IMAGE_<X>=<name>, BAVS_IMAGE_<X>_REF=<containerd name>, BAVS_IMAGE_<X>_ARCHIVE=<file>.
    local -A ref=() archive=()
    local key value
    while IFS='=' read -r key value; do
        case $key in
            BAVS_IMAGE_*_REF) ref[${key%_REF}]=$value ;;
            BAVS_IMAGE_*_ARCHIVE) archive[${key%_ARCHIVE}]=$value ;;
        esac
    done < <(grep -v '^#' "$env_file")
    ((${#archive[@]})) || bavs_die "$env_file lists no archives"

    local image listed start total=$SECONDS
    bavs_step "importing ${#archive[@]} images into containerd $address (namespace $namespace)"
    for image in $(printf '%s\n' "${!archive[@]}" | sort); do
        start=$SECONDS
        [[ -f ${archive[$image]} ]] || bavs_die "${archive[$image]} (from $env_file) is missing: run build-images.sh again"
        ctr --address "$address" -n "$namespace" images import "${archive[$image]}" >/dev/null ||
            bavs_die "ctr images import ${archive[$image]} failed"
        listed=$(ctr --address "$address" -n "$namespace" images ls -q)
        grep -qxF "${ref[$image]}" <<<"$listed" ||
            bavs_die "${ref[$image]} is not listed in containerd after importing ${archive[$image]}"
        printf '%-10s imported %3ss  %s\n' "$(tr '[:upper:]' '[:lower:]' <<<"${image#BAVS_IMAGE_}")" "$((SECONDS - start))" "${ref[$image]}"
    done
    bavs_step "imported in $((SECONDS - total))s"
}

main "$@"
