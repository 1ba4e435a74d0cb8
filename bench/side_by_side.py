"""petrel beside the systems people use today, on this machine, in one run.

    python -m bench [--quick] [--sizes 1KiB,10KiB,100KiB]        (make bench)

Starts on 127.0.0.1, each in its own process: a petrel gateway (durability `batch`:
acknowledged after fdatasync), SeaweedFS (`weed server -s3`, its default: no fsync), Redis
(in memory, no persistence: the in-memory ceiling) and a bare aiohttp server (the load
generator's own ceiling). Then, per object size, the same workloads against each:

- S3 PUT and GET, one object per request: `petrel bench`'s load generator
  (petrel/loadgen.py: processes x keep-alive connections, presigned URLs) against
  petrel and SeaweedFS alike;
- petrel batch get (100 objects per request), the same generator;
- the generator against the bare server: what it can drive at most (it must exceed
  every server it measures, or the figures measure the generator);
- Redis SET/GET with `redis-benchmark` (C, the same number of connections);
- local filesystem reads of the same objects as files, from Python, page cache warm;
- the PyTorch DataLoader over petrel.torch.Dataset, when `bench.loader` is present.

Writes bench/results/<date>.md, .json and .png (a chart), with the machine's CPU, cores
and memory. Every phase is bounded in time; servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from bench import machine
from bench.s3_servers import (
    HOST,
    Credentials,
    Server,
    free_port,
    start_ceiling,
    start_petrel,
    start_seaweedfs,
    stop,
    weed_version,
)
from petrel import loadgen
from petrel.loadgen import Mode, Plan, Target

CREDS = Credentials("PKBENCHSIDEBYSIDE001", "side-by-side-secret-0123456789abcdefgh")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass(frozen=True, slots=True)
class Settings:
    sizes: tuple[int, ...]
    objects: int
    duration_s: float
    warmup_s: float
    connections: int
    processes: int
    batch_size: int
    out_dir: str
    work_dir: str


@dataclass(frozen=True, slots=True)
class Row:
    workload: str  # "S3 GET", "S3 PUT", "batch get", "Redis GET", ...
    system: str  # "petrel", "SeaweedFS", "Redis", "local files", "generator ceiling"
    size: int
    requests_per_s: float
    objects_per_s: float
    mb_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    durability: str
    how: str


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def size_text(size: int) -> str:
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


# ----- workloads through petrel's load generator --------------------------------------
def _generator_row(workload: str, system: str, server: Server, settings: Settings, size: int,
                   mode: Mode, durability: str, bucket: str, prepare: bool) -> Row:
    target = Target(server.endpoint, CREDS.access_key, CREDS.secret_key, CREDS.region)
    plan = Plan(mode, bucket, "sbs/", settings.objects, size, size, settings.connections,
                settings.processes, duration_s=settings.duration_s,
                warmup_s=settings.warmup_s, batch_size=settings.batch_size)
    if prepare:
        loadgen.sequential(target, plan, Mode.PUT)
    tally = loadgen.run_plan(target, plan)
    latencies = sorted(tally.latencies)
    elapsed = tally.elapsed_s or 1e-9
    per_request = f"{settings.batch_size} objects per request, " \
        if mode is Mode.BATCH_GET else ""
    return Row(workload, system, size, tally.ops / elapsed, tally.objects / elapsed,
               tally.bytes / elapsed / 1e6, loadgen.percentile(latencies, 0.5) * 1000,
               loadgen.percentile(latencies, 0.99) * 1000, sum(tally.errors.values()),
               durability,
               f"petrel bench generator, {per_request}{settings.processes} processes x "
               f"{settings.connections} connections, {settings.duration_s:.0f} s")


def s3_rows(server: Server, system: str, settings: Settings, size: int,
            batch: bool) -> list[Row]:
    bucket = f"sbs-{size}"
    loadgen.ensure_bucket(Target(server.endpoint, CREDS.access_key, CREDS.secret_key),
                          bucket)
    rows = [
        _generator_row("S3 PUT", system, server, settings, size, Mode.PUT, server.durability,
                       bucket, prepare=False),
        _generator_row("S3 GET", system, server, settings, size, Mode.GET, server.durability,
                       bucket, prepare=True),
    ]
    if batch:
        rows.append(_generator_row("batch get", system, server, settings, size,
                                   Mode.BATCH_GET, server.durability, bucket, prepare=False))
    return rows


def ceiling_row(settings: Settings, size: int) -> Row:
    server = start_ceiling(size, settings.work_dir)
    try:
        return _generator_row("S3 GET", "generator ceiling", server, settings, size, Mode.GET,
                              "n/a (no storage)", "any", prepare=False)
    finally:
        stop(server)


# ----- Redis ----------------------------------------------------------------------
@contextmanager
def redis_server(work_dir: str) -> Iterator[int]:
    port = free_port()
    log_path = os.path.join(work_dir, "redis.log")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", work_dir, "--protected-mode", "yes"],
            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "ping"],
                                  capture_output=True, text=True, timeout=5, check=False)
            if done.stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"redis-server did not start; see {log_path}")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_rows(port: int, settings: Settings, size: int) -> list[Row]:
    # As many requests as the S3 runs take at ~100k/s, bounded: redis-benchmark stops
    # after -n requests, not after a time.
    requests = int(min(2_000_000, max(50_000, 100_000 * settings.duration_s)))
    done = subprocess.run(
        ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", "set,get", "-d", str(size),
         "-c", str(settings.connections), "-n", str(requests), "-r", str(settings.objects),
         "--csv"], capture_output=True, text=True, timeout=600, check=True)
    rows = []
    for line in done.stdout.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) < 2 or cells[0] not in ("SET", "GET"):
            continue
        rate = float(cells[1])
        # test, rps, avg, min, p50, p95, p99, max (milliseconds)
        p50 = float(cells[4]) if len(cells) >= 8 else None
        p99 = float(cells[6]) if len(cells) >= 8 else None
        rows.append(Row(f"Redis {cells[0]}", "Redis", size, rate, rate, rate * size / 1e6,
                        p50, p99, 0, "none (in memory)",
                        f"redis-benchmark -c {settings.connections} -n {requests}"))
    return rows


# ----- local files ----------------------------------------------------------------
def local_files_row(settings: Settings, size: int) -> Row:
    """The same objects as files: open/read/close from one Python process, shuffled
    order, page cache warm (each file read once beforehand)."""
    root = os.path.join(settings.work_dir, f"files-{size}")
    os.makedirs(root, exist_ok=True)
    payload = os.urandom(size)
    paths = []
    for index in range(settings.objects):
        directory = os.path.join(root, f"{index // 1000:04d}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{index:08d}.bin")
        with open(path, "wb") as handle:
            handle.write(payload)
        paths.append(path)
    for path in paths:  # warm
        with open(path, "rb") as handle:
            handle.read()
    order = paths[:]
    random.Random(1).shuffle(order)
    reads = 0
    began = time.perf_counter()
    deadline = began + settings.duration_s
    while time.perf_counter() < deadline:
        for path in order:
            with open(path, "rb") as handle:
                handle.read()
        reads += len(order)
    elapsed = time.perf_counter() - began
    shutil.rmtree(root, ignore_errors=True)
    rate = reads / elapsed
    return Row("file read", "local files", size, rate, rate, rate * size / 1e6, None, None,
               0, "page cache", "open/read/close in one Python process, shuffled")


# ----- the loader (issue 5's benchmark, when present) -----------------------------
def loader_rows(server: Server, settings: Settings, size: int) -> list[Row]:
    try:
        from bench import loader  # optional: issue 5's loader benchmark
    except ImportError:
        return []
    run = getattr(loader, "side_by_side_rows", None)
    if run is None:
        return []
    return [Row(**row) for row in run(server.endpoint, CREDS.access_key, CREDS.secret_key,
                                      size, settings.objects, settings.duration_s)]


# ----- the run --------------------------------------------------------------------
def run(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for size in settings.sizes:
        log(f"{size_text(size)}: generator ceiling")
        rows.append(ceiling_row(settings, size))
        for name, start, batch in (
            ("petrel", lambda d: start_petrel("petrel", d, "batch", CREDS, settings.work_dir),
             True),
            ("SeaweedFS", lambda d: start_seaweedfs("seaweedfs", d, CREDS, settings.work_dir),
             False),
        ):
            data_dir = tempfile.mkdtemp(prefix=f"{name.lower()}-", dir=settings.work_dir)
            log(f"{size_text(size)}: {name}")
            server = start(data_dir)
            try:
                rows += s3_rows(server, name, settings, size, batch)
                if name == "petrel":
                    rows += loader_rows(server, settings, size)
            finally:
                stop(server)
                shutil.rmtree(data_dir, ignore_errors=True)
        log(f"{size_text(size)}: Redis")
        with redis_server(settings.work_dir) as port:
            rows += redis_rows(port, settings, size)
        log(f"{size_text(size)}: local files")
        rows.append(local_files_row(settings, size))
    return rows


def write_results(rows: list[Row], settings: Settings, argv: Sequence[str]) -> str:
    os.makedirs(settings.out_dir, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    base = os.path.join(settings.out_dir, stamp)
    described = machine.describe(settings.work_dir)
    document = {"date": stamp, "command": " ".join(["python -m bench", *argv]),
                "machine": asdict(described), "seaweedfs": weed_version(),
                "settings": asdict(settings), "rows": [asdict(r) for r in rows]}
    with open(base + ".json", "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
    chart(rows, base + ".png")
    with open(base + ".md", "w", encoding="utf-8") as handle:
        handle.write(markdown(rows, document, os.path.basename(base) + ".png"))
    return base + ".md"


def markdown(rows: list[Row], document: dict[str, object], png: str) -> str:
    described = document["machine"]
    assert isinstance(described, dict)
    lines = [
        f"# Side by side, {document['date']}",
        "",
        f"Command: `{document['command']}`. Machine: {described['cpu_model']}, "
        f"{described['cpus_usable']} usable cores, "
        f"{described['memory_bytes'] / 1024**3:.0f} GiB memory, kernel {described['kernel']}, "
        f"Python {described['python']}; petrel {described['source']}; "
        f"{document['seaweedfs']}. Load average at the end: {described['load_average']}.",
        "",
        "All servers run on this machine beside the load generator, each in its own "
        "process; figures are one run on a shared machine: compare within a row group.",
        "",
        f"![objects per second]({png})",
        "",
        "| size | workload | system | objects/s | requests/s | MB/s | p50 ms | p99 ms "
        "| errors | durability | how |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for row in rows:
        lines.append(
            f"| {size_text(row.size)} | {row.workload} | {row.system} | "
            f"{row.objects_per_s:,.0f} | {row.requests_per_s:,.0f} | {row.mb_per_s:,.1f} | "
            f"{ms(row.p50_ms)} | {ms(row.p99_ms)} | {row.errors} | {row.durability} | "
            f"{row.how} |")
    lines += ["", "Ratios (petrel / SeaweedFS, same size, same generator):", ""]
    for size in sorted({r.size for r in rows}):
        def find(workload: str, system: str, size: int = size) -> Row | None:
            return next((r for r in rows if r.size == size and r.workload == workload
                         and r.system == system), None)

        for workload in ("S3 GET", "S3 PUT"):
            ours, theirs = find(workload, "petrel"), find(workload, "SeaweedFS")
            if ours and theirs and theirs.objects_per_s:
                lines.append(f"- {size_text(size)} {workload}: "
                             f"{ours.objects_per_s / theirs.objects_per_s:.2f}x")
        batch, theirs = find("batch get", "petrel"), find("S3 GET", "SeaweedFS")
        if batch and theirs and theirs.objects_per_s:
            lines.append(f"- {size_text(size)} petrel batch get vs SeaweedFS GET: "
                         f"{batch.objects_per_s / theirs.objects_per_s:.2f}x objects/s")
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.size for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5.5), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=True):
        subset = [r for r in rows if r.size == size]
        labels = [f"{r.workload} · {r.system}" for r in subset]
        values = [r.objects_per_s for r in subset]
        colours = ["#1f6feb" if r.system == "petrel" else "#8b949e" for r in subset]
        axis.barh(labels, values, color=colours)
        axis.set_xscale("log")
        axis.invert_yaxis()
        axis.set_title(f"{size_text(size)} objects")
        axis.set_xlabel("objects per second (log scale)")
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_sizes(text: str) -> tuple[int, ...]:
    from petrel.cli.bench import parse_size

    return tuple(parse_size(part) for part in text.split(",") if part)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="10 KiB only, 2,000 objects, 5 s per workload")
    parser.add_argument("--sizes", type=parse_sizes, default=None)
    parser.add_argument("--objects", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    missing = [tool for tool in ("redis-server", "redis-benchmark") if not shutil.which(tool)]
    if missing:
        print(f"missing {', '.join(missing)}: run sh bench/setup.sh", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="petrel-bench-") as work_dir:
        settings = Settings(
            sizes=args.sizes or ((10 * 1024,) if args.quick else (1024, 10 * 1024, 100 * 1024)),
            objects=args.objects or (2_000 if args.quick else 20_000),
            duration_s=args.duration or (5.0 if args.quick else 15.0),
            warmup_s=args.warmup, connections=args.concurrency, processes=args.processes,
            batch_size=args.batch_size, out_dir=args.out, work_dir=work_dir)
        rows = run(settings)
        path = write_results(rows, settings, list(argv if argv is not None else sys.argv[1:]))
    log(f"wrote {path}")
    with open(path, encoding="utf-8") as handle:
        print(handle.read())
    return 0

