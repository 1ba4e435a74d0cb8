"""Issue 6's benchmark: batch get through a petrel gateway whose segments live in
SeaweedFS, with a cold and a warm local read cache, against SeaweedFS's own S3 gateway
(one GET per object, many connections) and against petrel's local-directory backend.

    python -m bench.backend [--objects 20000] [--size 10KiB] [--batch-size 100]

Every pass reads each object exactly once, in a seeded shuffled order (what a training
epoch does), with `petrel bench`'s load generator (petrel/loadgen.py: processes x
keep-alive connections). Cold: the gateway restarted with an empty cache, so every
block comes from SeaweedFS; warm: the same pass again, twice. The local backend's pass
follows one pass that warms its page cache (and the gateway's processes), so the warm
comparison takes the second warm pass over SeaweedFS, which has as many before it; the
first is reported too (the reader process does its first work in it: every cold batch
goes to the primary, which alone fetches). Writes
bench/results/backend-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from bench import first_touch, machine
from bench.s3_servers import tree_cpu_seconds
from petrel import loadgen
from petrel.loadgen import Mode, Plan, Target
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway
from petrel.testing.seaweedfs import SeaweedFS, weed_version

ACCESS, SECRET = "PKBENCHBACKEND000001", "bench-backend-secret-0123456789abcdef"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_TOUCH_MIB = 240
_SECOND_WARM = "petrel batch get, SeaweedFS backend, warm cache, second pass"


@dataclass(frozen=True, slots=True)
class Pass:
    name: str
    system: str
    objects_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    seconds: float
    # CPU seconds each party used during the pass: where a pass's time goes on a
    # machine all of them share.
    cpu_s: dict[str, float]


def log(message: str) -> None:
    print(f"[bench.backend {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by `pid` and the processes under it (0 for None)."""
    return 0.0 if pid is None else tree_cpu_seconds(pid)


def _own_cpu_s() -> float:
    """This process and its waited-for children (the load generator's processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def one_pass(name: str, system: str, target: Target, plan: Plan,
             servers: dict[str, int | None]) -> Pass:
    """One pass of `plan`; `servers` names the server processes whose CPU is counted."""
    before = {party: tree_cpu_s(pid) for party, pid in servers.items()}
    own = _own_cpu_s()
    tally = loadgen.run_plan(target, plan)
    cpu = {party: tree_cpu_s(pid) - before[party] for party, pid in servers.items()}
    cpu["load generator"] = _own_cpu_s() - own
    latencies = sorted(tally.latencies)
    seconds = tally.elapsed_s or 1e-9
    result = Pass(name, system, tally.objects / seconds, tally.ops / seconds,
                  loadgen.percentile(latencies, 0.5) * 1000,
                  loadgen.percentile(latencies, 0.99) * 1000, sum(tally.errors.values()),
                  seconds, cpu)
    log(f"{name}: {result.objects_per_s:,.0f} objects/s, {result.errors} errors, CPU s "
        + ", ".join(f"{party} {used:.1f}" for party, used in cpu.items()))
    return result


def petrel_gateway(data_dir: str, weed: SeaweedFS | None, io_threads: int) -> Gateway:
    flags = ["--access-key", ACCESS, "--secret-key", SECRET, "--log-level", "warning"]
    env = {"PETREL_IO_THREADS": str(io_threads)}
    if weed is not None:
        flags += ["--backend", "s3://petrel-backend/segments",
                  "--backend-endpoint", weed.endpoint, "--backend-path-style"]
        env |= {"PETREL_BACKEND_ACCESS_KEY": ACCESS, "PETREL_BACKEND_SECRET_KEY": SECRET}
    return start_gateway(data_dir, *flags, env=env, timeout_s=120)


def run(args: argparse.Namespace, work: str) -> list[Pass]:
    passes: list[Pass] = []
    weed = SeaweedFS.create(os.path.join(work, "weed"), os.path.join(work, "weed.log"),
                            access_key=ACCESS, secret_key=SECRET)
    os.makedirs(weed.data_dir, exist_ok=True)
    weed.start()
    try:
        weed_target = Target(weed.endpoint, ACCESS, SECRET)
        base = Plan(Mode.BATCH_GET, "data", "obj/", args.objects, args.size, args.size,
                    args.concurrency, args.processes, ops=args.objects,
                    batch_size=args.batch_size, sequential=True, shuffled=True, seed=7)
        # SeaweedFS directly: one GET per object.
        loadgen.ensure_bucket(weed_target, "direct")
        direct = replace(base, bucket="direct")
        log(f"writing {args.objects} objects to SeaweedFS directly")
        loadgen.sequential(weed_target, direct, Mode.PUT)
        passes.append(one_pass("SeaweedFS GET per object", "SeaweedFS", weed_target,
                               replace(direct, mode=Mode.GET,
                                       connections=args.get_concurrency),
                               {"SeaweedFS": weed.pid}))
        loadgen.ensure_bucket(weed_target, "petrel-backend")

        # petrel over SeaweedFS: write, stop (seals and uploads), drop the local cache.
        data_dir = os.path.join(work, "petrel-s3")
        gateway = petrel_gateway(data_dir, weed, args.io_threads)
        target = Target(gateway.endpoint, ACCESS, SECRET)
        try:
            loadgen.ensure_bucket(target, "data")
            log(f"writing {args.objects} objects through petrel (batch put)")
            loadgen.sequential(target, replace(base, batch_size=200), Mode.BATCH_PUT)
        finally:
            assert stop_gateway(gateway, timeout_s=300) == 0, gateway.log()[-3000:]
        shutil.rmtree(os.path.join(data_dir, "cache"), ignore_errors=True)
        gateway = petrel_gateway(data_dir, weed, args.io_threads)
        target = Target(gateway.endpoint, ACCESS, SECRET)
        try:
            both = {"petrel": gateway.process.pid, "SeaweedFS": weed.pid}
            passes.append(one_pass("petrel batch get, SeaweedFS backend, cold cache",
                                   "petrel (S3 backend)", target, base, both))
            passes.append(one_pass("petrel batch get, SeaweedFS backend, warm cache",
                                   "petrel (S3 backend)", target, base, both))
            passes.append(one_pass(_SECOND_WARM, "petrel (S3 backend)", target, base, both))
        finally:
            stop_gateway(gateway, timeout_s=300)

        # petrel on its local-directory backend, for the warm comparison.
        gateway = petrel_gateway(os.path.join(work, "petrel-local"), None, args.io_threads)
        target = Target(gateway.endpoint, ACCESS, SECRET)
        try:
            loadgen.ensure_bucket(target, "data")
            loadgen.sequential(target, replace(base, batch_size=200), Mode.BATCH_PUT)
            alone = {"petrel": gateway.process.pid}
            one_pass("(page cache warm-up)", "petrel (local)", target, base, alone)
            passes.append(one_pass("petrel batch get, local backend", "petrel (local)",
                                   target, base, alone))
        finally:
            stop_gateway(gateway)
    finally:
        weed.stop()
    return passes


def report(passes: list[Pass], args: argparse.Namespace, argv: Sequence[str],
           work: str, touch: list[tuple[str, float, float]]) -> str:
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    base = os.path.join(args.out, f"backend-{stamp}")
    described = machine.describe(work)
    by_name = {p.name: p for p in passes}
    direct = by_name["SeaweedFS GET per object"].objects_per_s
    cold = by_name["petrel batch get, SeaweedFS backend, cold cache"].objects_per_s
    warm = by_name[_SECOND_WARM].objects_per_s
    local = by_name["petrel batch get, local backend"].objects_per_s
    document = {"date": stamp, "command": " ".join(["python -m bench.backend", *argv]),
                "machine": asdict(described), "seaweedfs": weed_version(),
                "settings": vars(args), "passes": [asdict(p) for p in passes],
                "cold_vs_direct": cold / direct, "warm_vs_local": warm / local,
                "first_touch": [{"round": name, "wall_s": wall, "cpu_s": cpu}
                                for name, wall, cpu in touch]}
    with open(base + ".json", "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
    lines = [
        f"# S3 backend: batch get over SeaweedFS, {stamp}",
        "",
        f"Command: `{document['command']}`. {described.cpu_model}, {described.cpus_usable} "
        f"usable cores, {described.memory_bytes / 1024**3:.0f} GiB; petrel "
        f"{described.source}; {document['seaweedfs']}. Load average at the end: "
        f"{described.load_average}. Everything (SeaweedFS, petrel, the load generator) "
        "shares this machine.",
        "",
        f"Before the run, `python -m bench.first_touch --mib {_TOUCH_MIB}`: a write into "
        "page cache this machine has not used lately cost "
        f"{first_touch.page_cache_first_cost(touch):.1f}x the CPU of one into pages just "
        "freed. The cold pass writes every block it fetches into the read cache, into "
        "such pages.",
        "",
        f"{args.objects:,} objects of {args.size:,} bytes, each read once per pass in a "
        f"seeded shuffled order; batch passes send {args.batch_size} keys per request; "
        f"the load generator runs {args.processes} processes x {args.concurrency} "
        f"connections ({args.get_concurrency} for the per-object GETs); petrel runs with "
        f"io_threads = {args.io_threads}.",
        "",
        "CPU columns: microseconds of CPU per object read, by the petrel gateway (all its "
        "processes), SeaweedFS, and the load generator, over the pass.",
        "",
        "| pass | objects/s | requests/s | p50 ms | p99 ms | errors | seconds | "
        "petrel CPU us/obj | SeaweedFS CPU us/obj | load generator CPU us/obj |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def per_object(p: Pass, party: str) -> str:
        used = p.cpu_s.get(party)
        objects = p.objects_per_s * p.seconds
        return "" if used is None or not objects else f"{used * 1e6 / objects:.0f}"

    for p in passes:
        lines.append(f"| {p.name} | {p.objects_per_s:,.0f} | {p.requests_per_s:,.0f} | "
                     f"{p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} | {p.seconds:.1f} | "
                     f"{per_object(p, 'petrel')} | {per_object(p, 'SeaweedFS')} | "
                     f"{per_object(p, 'load generator')} |")
    lines += [
        "",
        f"- cold batch get vs SeaweedFS per-object GET: **{cold / direct:.2f}x** "
        f"(target at least 5x: {'met' if cold >= 5 * direct else 'missed'})",
        f"- warm batch get (second pass) vs the local backend (after its warm-up pass): "
        f"**{warm / local:.2f}x** (target within "
        f"20%: {'met' if warm >= 0.8 * local else 'missed'})",
    ]
    with open(base + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return base + ".md"


def main(argv: Sequence[str] | None = None) -> int:
    from petrel.cli.bench import parse_size

    parser = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--size", type=parse_size, default=10 * 1024)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--get-concurrency", type=int, default=64,
                        help="connections for the per-object GETs against SeaweedFS")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--io-threads", type=int, default=16,
                        help="the gateway's io_threads: parallel ranged GETs to the backend")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="petrel-bench-backend-") as work:
        touch = first_touch.measure(_TOUCH_MIB, work)
        passes = run(args, work)
        path = report(passes, args, list(argv if argv is not None else sys.argv[1:]), work,
                      touch)
    with open(path, encoding="utf-8") as handle:
        print(handle.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
