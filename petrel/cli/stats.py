"""`petrel stats`: objects, bytes, segments, dead bytes, cache hit rates of a running
gateway (see petrel/cli/ops.py)."""

from petrel.cli.ops import add_stats_arguments as add_arguments
from petrel.cli.ops import run_stats as run

__all__ = ["add_arguments", "run"]
