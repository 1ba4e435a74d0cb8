"""Soak: a gateway under high load for a bounded time, memory, open files and latency
recorded, and a verdict on whether memory and file descriptors stay flat (issue 9):

    python -m bench.soak [--minutes 30] [--connections 32] [--processes 1]

Starts a gateway as the README does on a temporary data directory, loads it with
petrel/loadgen.py (mixed GET/PUT and batch get/put phases), samples the gateway's
memory (VmRSS, RssAnon), /proc/PID/fd and the index's WAL every few seconds, and writes
bench/results/soak-<date>.md and .png (matplotlib; `sh bench/setup.sh .venv` installs
it). Exit status 1 if memory (anonymous, net of the index's memtables) or file
descriptors grew (petrel/testing/soak.py defines flat) or requests failed.
The CI version (two minutes) is tests/reliability/test_soak.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from petrel.loadgen import Target
from petrel.recovery import index_dir
from petrel.testing.gateway import start_gateway, stop_gateway
from petrel.testing.soak import MiB, SoakOptions, run_soak

ACCESS_KEY, SECRET_KEY = "PKSOAK00000000000001", "soak-secret-0123456789abcdefghijklmnopq"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--warmup-phase-s", type=float, default=10.0)
    parser.add_argument("--name", default=time.strftime("soak-%Y-%m-%d"),
                        help="result file name under bench/results (no suffix)")
    args = parser.parse_args(argv)
    options = SoakOptions(duration_s=args.minutes * 60, sample_s=args.sample_s,
                          phase_s=args.phase_s, connections=args.connections,
                          processes=args.processes, objects=args.objects,
                          warmup_phase_s=args.warmup_phase_s)
    work = tempfile.mkdtemp(prefix="petrel-soak-")
    gateway = start_gateway(f"{work}/data", "--access-key", ACCESS_KEY, "--secret-key",
                            SECRET_KEY)
    try:
        result = run_soak(Target(gateway.endpoint, ACCESS_KEY, SECRET_KEY),
                          gateway.process.pid, gateway.data_dir, options)
    finally:
        code = stop_gateway(gateway, timeout_s=120)
        sst_bytes = _sst_bytes(index_dir(gateway.data_dir))
        shutil.rmtree(work, ignore_errors=True)
    title = f"petrel soak, {args.minutes:g} min ({args.name})"
    os.makedirs(RESULTS, exist_ok=True)
    markdown = result.markdown(title) + (
        f"\nCommand: `python -m bench.soak --minutes {args.minutes:g} --connections "
        f"{args.connections} --processes {args.processes}`; gateway exit status {code}.\n"
        f"Index tables (SST files) on disk at the end: {sst_bytes / MiB:.1f} MiB, "
        "compressed; the index's block cache holds blocks of these only. "
        f"Machine: {os.cpu_count()} cores (shared). Chart: {args.name}.png\n")
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    result.chart(os.path.join(RESULTS, f"{args.name}.png"), title)
    print(markdown)
    flat = all(check.ok for check in result.verdict().values())
    return 0 if flat and result.errors == 0 and code == 0 else 1


def _sst_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, name))
               for name in os.listdir(directory) if name.endswith(".sst"))


if __name__ == "__main__":
    sys.exit(main())
