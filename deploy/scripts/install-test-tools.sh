#!/bin/sh
# Installs the test tools that are not Python packages. awscli and s3cmd come from PyPI
# through the `test` extra in pyproject.toml; rclone is not on PyPI, so it comes from
# the Debian package. Idempotent: does nothing when `rclone` is already on PATH.
#
# It never fails the build itself: where rclone cannot be installed it says why, and
# tests/gateway/test_clients_rclone.py then fails under CI=true (skips elsewhere) with
# that reason, so the rest of the suite still runs.
set -u

if command -v rclone >/dev/null 2>&1; then
    exit 0
fi

warn() {
    echo "install-test-tools: $*" >&2
    echo "install-test-tools: rclone tests will fail under CI=true and skip otherwise." >&2
    echo "install-test-tools: install it by hand: apt-get install rclone" \
         "(or https://rclone.org/install/)" >&2
}

if ! command -v apt-get >/dev/null 2>&1; then
    warn "rclone is missing and apt-get is not available on this machine."
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    warn "rclone is missing and installing it needs root (not root, no password-less sudo)."
    exit 0
fi

echo "install-test-tools: installing rclone from Debian (apt-get)" >&2
if $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends rclone; then
    exit 0
fi
warn "apt-get install rclone failed (output above)."
exit 0
