#!/usr/bin/env bash
# Install the reference Standard Webhooks verifier (PyPI `standardwebhooks`, pinned) into a venv
# cached per version under the tools cache. The worker's webhook tests check deliveries with it
# rather than with our own code, so a signing mistake cannot hide behind a matching verifying one.
# Idempotent: when the venv is there a run installs nothing. Prints one line.
#
#   bash testing/webhook-verifier/provision.sh        (or: just provision-webhook-verifier)
#
# The tests find the venv's python at the path printed here: testing/src/webhook_verifier.rs reads
# the version from the STANDARDWEBHOOKS_VERSION= line below (keep that line's form) and looks in
# the same cache.
set -euo pipefail

# shellcheck source=testing/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

STANDARDWEBHOOKS_VERSION=1.1.0
venv=$BAVS_TOOLS_DIR/standardwebhooks-$STANDARDWEBHOOKS_VERSION

# The stamp is written last: an interrupted install never leaves a venv that looks complete.
stamp=$venv/.installed
if [[ -f $stamp ]]; then
    printf '%-16s cached    %s (%s)\n' standardwebhooks "$STANDARDWEBHOOKS_VERSION" "$venv"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || bavs_die "python3 is not on PATH; install it (Debian: apt-get install -y python3 python3-venv)"
# Debian splits venv's pip bootstrap into python3-venv; install it like the stack's packages.
python3 -c 'import ensurepip' >/dev/null 2>&1 || bavs_apt_install python3-venv
mkdir -p "$BAVS_TOOLS_DIR"
# Serialise concurrent runs (two test runs starting at once).
exec 8>"$BAVS_TOOLS_DIR/.standardwebhooks.lock"
flock 8
if [[ ! -f $stamp ]]; then
    rm -rf "$venv"
    log=$BAVS_TOOLS_DIR/standardwebhooks-$STANDARDWEBHOOKS_VERSION.install.log
    if ! { python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
            "standardwebhooks==$STANDARDWEBHOOKS_VERSION" &&
        "$venv/bin/python" -c 'import standardwebhooks'; } >"$log" 2>&1; then
        printf 'ERROR: installing standardwebhooks %s failed; last lines of %s:\n' "$STANDARDWEBHOOKS_VERSION" "$log" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    touch "$stamp"
fi
printf '%-16s installed %s (%s)\n' standardwebhooks "$STANDARDWEBHOOKS_VERSION" "$venv"
