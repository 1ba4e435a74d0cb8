"""Where a batch-get pass over the S3 backend spends, process by process: one gateway with
SeaweedFS behind it, a cold pass and `--warm-passes` warm ones, and for each the
objects/s and, per gateway process (the primary, then its readers), CPU microseconds and
minor page faults per object read.

    python -m bench.backend_passes [--objects 50000] [--warm-passes 3] [--rounds 1]

`bench.backend` compares petrel with SeaweedFS; this is for changes to petrel's own
read path (run it on a revision and on the change, alternately: this machine moves by a
third from minute to minute). Each round restarts the gateway on an empty read cache.
Prints one line per pass; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace

from bench.backend import ACCESS, SECRET, petrel_gateway
from bench.s3_servers import cpu_seconds, descendants, minor_faults
from petrel import loadgen
from petrel.loadgen import Mode, Plan, Target
from petrel.testing.gateway import stop_gateway
from petrel.testing.seaweedfs import SeaweedFS


def faults_and_cpu(pids: list[int]) -> dict[int, tuple[int, float]]:
    """Per process still running: (minor faults, CPU seconds) so far."""
    found = {}
    for pid in pids:
        try:
            found[pid] = (minor_faults(pid), cpu_seconds(pid))
        except OSError:  # exited meanwhile
            continue
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend_passes",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--warm-passes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--io-threads", type=int, default=16)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="petrel-bench-passes-")
    weed = SeaweedFS.create(os.path.join(work, "weed"), os.path.join(work, "weed.log"),
                            access_key=ACCESS, secret_key=SECRET)
    os.makedirs(weed.data_dir, exist_ok=True)
    weed.start()
    try:
        loadgen.ensure_bucket(Target(weed.endpoint, ACCESS, SECRET), "petrel-backend")
        plan = Plan(Mode.BATCH_GET, "data", "obj/", args.objects, 10240, 10240, 16, 2,
                    ops=args.objects, batch_size=100, sequential=True, shuffled=True, seed=7)
        data_dir = os.path.join(work, "petrel")
        gateway = petrel_gateway(data_dir, weed, args.io_threads)
        try:
            target = Target(gateway.endpoint, ACCESS, SECRET)
            loadgen.ensure_bucket(target, "data")
            loadgen.sequential(target, replace(plan, batch_size=200), Mode.BATCH_PUT)
        finally:
            assert stop_gateway(gateway, timeout_s=300) == 0, gateway.log()[-3000:]
        for round_number in range(args.rounds):
            shutil.rmtree(os.path.join(data_dir, "cache"), ignore_errors=True)
            gateway = petrel_gateway(data_dir, weed, args.io_threads)
            try:
                target = Target(gateway.endpoint, ACCESS, SECRET)
                time.sleep(1)  # the readers up
                pids = [gateway.process.pid, *descendants(gateway.process.pid)]
                names = ["cold"] + [f"warm {n + 1}" for n in range(args.warm_passes)]
                for name in names:
                    before = faults_and_cpu(pids)
                    tally = loadgen.run_plan(target, plan)
                    after = faults_and_cpu(pids)
                    objects = tally.objects or 1
                    parts = [f"pid {pid}: {(after[pid][1] - before[pid][1]) * 1e6 / objects:.1f}"
                             f" us CPU, {(after[pid][0] - before[pid][0]) / objects:.2f} "
                             "faults" for pid in pids if pid in before and pid in after]
                    print(f"round {round_number + 1} {name}: "
                          f"{tally.objects / (tally.elapsed_s or 1e-9):,.0f} objects/s, "
                          f"{sum(tally.errors.values())} errors; per object: "
                          + "; ".join(parts), flush=True)
            finally:
                stop_gateway(gateway, timeout_s=300)
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
