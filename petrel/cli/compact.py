"""`petrel compact`: compact a running gateway's segments now, at a given rate (see
petrel/cli/ops.py)."""

from petrel.cli.ops import add_compact_arguments as add_arguments
from petrel.cli.ops import run_compact as run

__all__ = ["add_arguments", "run"]
