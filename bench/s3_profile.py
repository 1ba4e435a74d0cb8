"""Where the petrel gateway spends its time per request under wrk load: py-spy samples
of the `petrel serve` process while wrk drives presigned GETs (or PUTs) at it.

    python -m bench.s3_profile                      # 10 KiB GETs, 20 s of samples
    python -m bench.s3_profile --op put --seconds 30 --native

Steps: start petrel (durability batch) on a scratch dir, upload `--count` objects with
boto3 (untimed), run wrk once without the profiler (the baseline rate), then again with
`py-spy record -f raw` attached for `--seconds`. The gateway's CPU time
(/proc/PID/stat) over the profiled run divided by the requests served gives CPU us per
request; py-spy's share of samples per frame turns that into us per request per frame.
Samples of an idle event loop (waiting in epoll) are not taken, so shares are of busy
time. Writes `<out>/s3-profile-<date>.md` (and the raw folded stacks next to it with
--keep-folded).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench import s3_servers as servers
from bench import s3_urls as urls
from bench.machine import describe
from bench.s3 import CREDS, PUT_RATE_CAP_PER_S, parse_size, size_text
from bench.s3_load import LoadSpec, WrkResult, command_for, parse_output, run_wrk

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
SAMPLE_RATE_HZ = 200
# wrk starts this long before py-spy attaches and runs this long after it detaches, so
# every sample falls inside steady load.
LEAD_S = 3
TOP_FRAMES = 30
MAIN_THREAD = "MainThread"  # the event loop: every request's Python code runs here
TOP_STACKS = 15
CATEGORIES = (  # first match wins: (name, substring of the leaf frame)
    ("event loop (uvloop C code, charged to run_until_complete)", "serve (petrel/cli/serve.py"),
    ("petrel gateway (gateway/)", "(gateway/"), ("petrel engine (petrel/)", "(petrel/"),
    ("aiohttp", "(aiohttp/"), ("multidict/yarl", "(multidict/"), ("multidict/yarl", "(yarl/"),
    ("asyncio", "(asyncio/"), ("rocksdict", "rocksdict"),
    ("datetime parsing (_strptime, locale)", "(_strptime.py"),
    ("datetime parsing (_strptime, locale)", "(locale.py"),
    ("dataclass __init__", "(<string>"), ("hmac/hashlib", "(hmac.py"),
    ("hmac/hashlib", "(hashlib.py"), ("urllib", "(urllib/"), ("uuid", "(uuid.py"),
    ("logging", "(logging/"),
    ("concurrent.futures (executor submit; in workers: waits)",
     "(concurrent/futures/thread.py"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """Samples of the event-loop thread (MainThread); other threads only counted."""

    samples: int
    threads: list[tuple[str, int]]  # thread name -> samples (all threads)
    own: list[tuple[str, int]]  # frame (function + file:line) -> samples at the top
    own_by_function: list[tuple[str, int]]  # function + file, lines merged
    inclusive: list[tuple[str, int]]  # function + file -> samples with it on the stack
    categories: list[tuple[str, int]]
    stacks: list[tuple[str, int]]


def shorten(frame: str) -> str:
    """`handler (/x/.venv/lib/python3.11/site-packages/aiohttp/web.py:12)` ->
    `handler (aiohttp/web.py:12)`; repo files relative to the repo root."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return f"{head}({tail.split(marker, 1)[1]}"
    frame = frame.replace(_ROOT + "/", "")
    for marker in ("/lib/python3.", "/lib64/python3."):
        if marker in frame:
            head, _, tail = frame.partition("(")
            rest = tail.split(marker, 1)[1]
            return f"{head}({rest.split('/', 1)[1] if '/' in rest else rest}"
    return frame


def without_line(frame: str) -> str:
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail.rstrip(")").isdigit() else frame


def category(frame: str) -> str:
    for name, marker in CATEGORIES:
        if marker in frame:
            return name
    return "other"


def parse_folded(lines: Iterable[str]) -> Profile:
    own: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    stacks: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, stack = stack.partition(";")  # `thread (TID): NAME` (py-spy --threads)
        name = thread.partition(": ")[2] or thread
        threads[name] += count
        if name != MAIN_THREAD or not stack:
            continue
        frames = [shorten(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        own_fn[without_line(frames[-1])] += count
        cats[category(frames[-1])] += count
        for fn in {without_line(f) for f in frames}:
            inclusive[fn] += count
        stacks[";".join(without_line(f).split(" (")[0] for f in frames[-6:])] += count
    return Profile(total, threads.most_common(), own.most_common(TOP_FRAMES),
                   own_fn.most_common(TOP_FRAMES), inclusive.most_common(TOP_FRAMES * 2),
                   cats.most_common(), stacks.most_common(TOP_STACKS))


def py_spy() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(candidate):
        raise RuntimeError(f"{candidate} missing: run bench/setup.sh (pip py-spy)")
    return candidate


@dataclass(frozen=True, slots=True)
class Sampled:
    profile: Profile
    result: WrkResult
    cpu_s: float  # the whole process
    loop_cpu_s: float  # the main (event-loop) thread
    py_spy_command: str


def profiled_run(server: servers.Server, spec: LoadSpec, seconds: int, native: bool,
                 folded_path: str) -> Sampled:
    """wrk (`spec`, which should last seconds + 2 * LEAD_S) with py-spy attached for the
    middle `seconds`; the gateway's CPU time is read around the whole wrk run."""
    wrk_spec = spec
    # Blocking mode (py-spy pauses the process for each sample): --nonblocking reads the
    # stack while it changes and returns torn, truncated stacks under this load.
    command = [py_spy(), "record", "-r", str(SAMPLE_RATE_HZ), "-d", str(seconds),
               "-p", str(server.pid), "-f", "raw", "--threads", "-o", folded_path]
    if native:
        command.append("--native")
    cpu_before = servers.cpu_seconds(server.pid)
    loop_before = servers.cpu_seconds(server.pid, server.pid)
    wrk = subprocess.Popen(command_for(server.endpoint, wrk_spec), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(LEAD_S)
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60)
        raw, _ = wrk.communicate(timeout=seconds + 2 * LEAD_S + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    cpu = servers.cpu_seconds(server.pid) - cpu_before
    loop_cpu = servers.cpu_seconds(server.pid, server.pid) - loop_before
    result = parse_output(raw, shlex.join(command_for(server.endpoint, wrk_spec)))
    with open(folded_path, encoding="utf-8", errors="replace") as handle:
        profile = parse_folded(handle)
    return Sampled(profile, result, cpu, loop_cpu, " ".join(command))


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "n/a"


def _us(count: int, total: int, us_per_request: float) -> str:
    return f"{us_per_request * count / total:.1f}" if total else "n/a"


def render(args: argparse.Namespace, baseline: WrkResult, sampled: Sampled,
           machine_line: str) -> str:
    p, r = sampled.profile, sampled.result
    us_per_request = sampled.loop_cpu_s * 1e6 / r.requests if r.requests else 0.0
    process_us = sampled.cpu_s * 1e6 / r.requests if r.requests else 0.0
    thread_samples = sum(n for _, n in p.threads)
    loop_ceiling = 1e6 / us_per_request if us_per_request else 0.0
    lines = [f"# petrel gateway profile under wrk {args.op.upper()} load "
             f"({datetime.date.today().isoformat()})", "",
             f"{size_text(args.size_bytes)} objects, wrk -t {args.threads} -c "
             f"{args.connections}, durability batch, {args.count} objects, petrel serve "
             f"--processes {args.processes} (the primary profiled; CPU per request counts "
             f"every process's requests). {machine_line}", "",
             f"- baseline (no profiler): {baseline.ops_per_s:,.0f} req/s, p50 "
             f"{baseline.latency_ms_p50:.2f} ms, p99 {baseline.latency_ms_p99:.2f} ms, "
             f"errors {baseline.errors}",
             f"- while profiled: {r.ops_per_s:,.0f} req/s, p99 {r.latency_ms_p99:.2f} ms, "
             f"errors {r.errors}",
             f"- gateway CPU over the profiled wrk run: event-loop thread "
             f"{sampled.loop_cpu_s:.1f} s for {r.requests:,} requests = **{us_per_request:.0f}"
             f" us CPU per request** on the loop ({loop_ceiling:,.0f} req/s at most from "
             f"one loop); whole process {sampled.cpu_s:.1f} s = "
             f"{process_us:.0f} us per request",
             f"- py-spy: {p.samples:,} busy samples of the event-loop thread at "
             f"{SAMPLE_RATE_HZ} Hz (`{sampled.py_spy_command}`); samples per thread: "
             + ", ".join(f"{name} {n:,} ({_pct(n, thread_samples)})" for name, n in p.threads)
             + " (other threads: their Python frames, which includes time blocked in "
             "pwritev/fdatasync/queue waits, not CPU)", "",
             "Tables below: the event-loop thread only. us/request = share of its busy "
             "samples x its CPU us per request. Without --native, time in C code (uvloop, "
             "hashing, RocksDB, socket writes) is charged to the Python frame that called "
             "it.", "", "## Own time by category", "",
             "| category | share | us/request |", "|---|---|---|"]
    lines += [f"| {name} | {_pct(n, p.samples)} | {_us(n, p.samples, us_per_request)} |"
              for name, n in p.categories]
    lines += ["", "## Top functions by own time (lines merged)", "",
              "| function | share | us/request |", "|---|---|---|"]
    lines += [f"| `{fn}` | {_pct(n, p.samples)} | {_us(n, p.samples, us_per_request)} |"
              for fn, n in p.own_by_function]
    lines += ["", "## Top frames by own time (function and line)", "",
              "| frame | share | us/request |", "|---|---|---|"]
    lines += [f"| `{fr}` | {_pct(n, p.samples)} | {_us(n, p.samples, us_per_request)} |"
              for fr, n in p.own]
    lines += ["", "## Inclusive time (function anywhere on the stack)", "",
              "| function | share | us/request |", "|---|---|---|"]
    lines += [f"| `{fn}` | {_pct(n, p.samples)} | {_us(n, p.samples, us_per_request)} |"
              for fn, n in p.inclusive]
    lines += ["", "## Hottest stacks (last 6 frames)", "", "| stack | share |", "|---|---|"]
    lines += [f"| `{st}` | {_pct(n, p.samples)} |" for st, n in p.stacks]
    lines += ["", "## Commands", "", "```",
              f".venv/bin/python -m bench.s3_profile {' '.join(args.argv)}".rstrip(),
              r.command, sampled.py_spy_command, "```"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=["get", "put"], default="get")
    parser.add_argument("--size", default="10k")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--processes", type=int, default=1,
                        help="petrel serve --processes; the primary is profiled, and its "
                             "CPU is divided by every request served (default 1)")
    parser.add_argument("--out", default=os.path.join(_HERE, "results"))
    parser.add_argument("--keep-folded", action="store_true")
    args = parser.parse_args(argv)
    args.size_bytes = parse_size(args.size)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    work = tempfile.mkdtemp(prefix="petrel-bench-s3-profile-")
    machine = describe(work)
    # py-spy follows one PID (the primary); with --processes > 1 its CPU is divided by
    # the requests every process served.
    server = servers.start_petrel("petrel-batch", os.path.join(work, "petrel"), "batch",
                                  CREDS, work, processes=args.processes)
    try:
        client = urls.boto3_client(server.endpoint, CREDS)
        urls.create_bucket(client, urls.BUCKET)
        urls.upload(client, urls.BUCKET, args.size_bytes, args.count)
        presigner = urls.Presigner.create(f"{servers.HOST}:{server.port}", CREDS)
        get_file = os.path.join(work, "get.txt")
        urls.write_paths(get_file, presigner, "GET", urls.BUCKET,
                         (urls.get_key(args.size_bytes, i) for i in range(args.count)))

        def spec(run: str, seconds: int) -> LoadSpec:
            if args.op == "get":
                return LoadSpec("get", args.threads, args.connections, seconds,
                                get_file=get_file)
            put_file = os.path.join(work, f"{run}.put")
            urls.write_paths(put_file, presigner, "PUT", urls.BUCKET,
                             (urls.put_key(run, i) for i in range(PUT_RATE_CAP_PER_S * seconds)))
            return LoadSpec("put", args.threads, args.connections, seconds,
                            put_file=put_file, body_bytes=args.size_bytes)

        baseline = run_wrk(server.endpoint, spec("baseline", args.seconds))
        folded = os.path.join(work, "profile.folded")
        sampled = profiled_run(server, spec("profiled", args.seconds + 2 * LEAD_S),
                               args.seconds, args.native, folded)
        stem = os.path.join(args.out, f"s3-profile-{args.op}-{datetime.date.today()}")
        os.makedirs(args.out, exist_ok=True)
        machine_line = (f"{machine.cpu_model}, {machine.cpus_usable} cores, petrel "
                        f"{machine.source}.")
        with open(stem + ".md", "w", encoding="utf-8") as handle:
            handle.write(render(args, baseline, sampled, machine_line))
        if args.keep_folded:
            shutil.copy(folded, stem + ".folded")
        print(f"wrote {stem}.md")
    finally:
        servers.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
