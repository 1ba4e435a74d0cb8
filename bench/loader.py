"""Loader benchmark (issue 5): reading small objects in shuffled order into Python.

    python -m bench.loader            # 1 KiB, 10 KiB (100k objects), 100 KiB (20k)
    python -m bench.loader --quick    # 10k / 2k objects, shorter time limits

For each object size, in one run on this machine, against a petrel gateway and a
SeaweedFS server started here on 127.0.0.1:
- per-request GET through boto3 with a thread pool (what users do today), against petrel
  and against SeaweedFS; and petrel.Client.get per request with the same pool;
- `petrel.Client.get_batch` (calls of `--batch-call` URLs), through the gateway and with
  short-circuit reads (petrel.shortcircuit: the client reads records from the gateway's
  segment files, as it does by default on the gateway's machine), and the pre-read path
  (PrefetchCache planned with the order, read with get_many per 256; short-circuit
  reads), with its default fetch threads and with one;
- a DataLoader (batch 256, 2 workers, fork) over petrel.torch.Dataset (with
  short-circuit reads, and through the gateway), over a dataset that calls boto3
  get_object per sample, and over a dataset reading local files (the two petrel loaders
  and the local-file one take turns, LOADER_ROUNDS times each).
Every run reads the same shuffled order, at most its object count and its time limit
(per-request runs are time-bounded: they would take minutes for 100k objects).
Results go to bench/results/loader-<date>[-quick].md and .json. Timings are wall clock,
objects/s = objects delivered into Python (into the loop body) per second.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import boto3
import torch.utils.data
from botocore.config import Config as BotoConfig

from bench.machine import describe, load_average
from bench.report import machine_lines
from bench.s3_servers import Credentials, Server, start_petrel, start_seaweedfs, stop
from bench.workload import window_payload
from petrel.client import Client
from petrel.prefetch import PrefetchCache, PrefetchSettings
from petrel.torch import Dataset, EpochSampler

KiB = 1024
CREDS = Credentials("PKBENCHLOADER0000001", "bench-loader-secret-key-0123456789abcdef")
BUCKET = "loader"
DATALOADER_BATCH = 256
DATALOADER_WORKERS = 2
POOL_THREADS = 16
SEED = 1234
# The petrel DataLoader and the local-files DataLoader run this many times each,
# alternating (petrel first, then files first, ...): one pass of each moves by a third
# from minute to minute on a shared machine, so their ratio is taken per round and the
# target judged on the median.
LOADER_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Plan:
    """Object counts and time limits of one run (full or --quick)."""

    sizes_bytes: tuple[int, ...]
    objects: dict[int, int]  # per size: objects stored in petrel and as local files
    weed_objects: dict[int, int]  # per size: objects stored in SeaweedFS (boto3 PUTs)
    per_request_s: float  # time limit of each per-request GET run
    batch_s: float  # time limit of each batch / pre-read / DataLoader run
    batch_call: int  # URLs per get_batch call


FULL = Plan((1 * KiB, 10 * KiB, 100 * KiB), {1 * KiB: 100_000, 10 * KiB: 100_000,
                                              100 * KiB: 20_000},
            {1 * KiB: 10_000, 10 * KiB: 10_000, 100 * KiB: 5_000}, 15.0, 60.0, 4000)
QUICK = Plan((1 * KiB, 10 * KiB, 100 * KiB), {1 * KiB: 10_000, 10 * KiB: 10_000,
                                               100 * KiB: 2_000},
             {1 * KiB: 2_000, 10 * KiB: 2_000, 100 * KiB: 1_000}, 5.0, 30.0, 4000)


@dataclass(slots=True)
class Run:
    name: str
    objects: int
    seconds: float
    bytes: int
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.objects / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class SizeResult:
    size_bytes: int
    objects: int
    runs: list[Run] = field(default_factory=list)

    def rate(self, name: str) -> float:
        return next((r.per_s for r in self.runs if r.name == name), 0.0)

    def rates(self, name: str) -> list[float]:
        """Per round: `name`'s rate in each round that ran it (see LOADER_ROUNDS)."""
        return [rate for rate in (self.rate(round_name(name, number))
                                  for number in range(LOADER_ROUNDS)) if rate]


def round_name(name: str, number: int) -> str:
    return name if number == 0 else f"{name} (round {number + 1})"


# ----- data ------------------------------------------------------------------------------
def keys_for(size: int, count: int) -> list[str]:
    return [f"s{size}/{i:07d}.bin" for i in range(count)]


def write_conf(path: str, endpoint: str, access_key: str, secret_key: str,
               short_circuit: bool | None = None) -> str:
    """A petreloss.conf at `path` with one cluster, `bench`, the default (short_circuit
    left to its default when None); returns `path`."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"[DEFAULT]\ndefault_cluster = bench\n[bench]\nhost_base = {endpoint}\n"
                     f"access_key = {access_key}\nsecret_key = {secret_key}\n")
        if short_circuit is not None:
            handle.write(f"short_circuit = {'true' if short_circuit else 'false'}\n")
    return path


def store_petrel(client: Client, size: int, keys: list[str], pool: bytes) -> None:
    step = max(1, min(1000, (32 << 20) // size))
    for start in range(0, len(keys), step):
        chunk = keys[start:start + step]
        client.put_batch([(f"s3://{BUCKET}/{k}", window_payload(size, start + i, pool))
                          for i, k in enumerate(chunk)])


def store_boto(s3: Any, size: int, keys: list[str], pool: bytes) -> None:
    def put(index: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=keys[index], Body=window_payload(size, index, pool))

    with ThreadPoolExecutor(POOL_THREADS) as pool_exec:
        list(pool_exec.map(put, range(len(keys))))


def store_files(root: str, size: int, keys: list[str], pool: bytes) -> None:
    for index, key in enumerate(keys):
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(window_payload(size, index, pool))


def boto_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=CREDS.access_key,
        aws_secret_access_key=CREDS.secret_key, region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4",
                          max_pool_connections=POOL_THREADS * 2,
                          retries={"max_attempts": 2}))


# ----- per-request runs ------------------------------------------------------------------
def pooled(name: str, get: Callable[[str], bytes], keys: Sequence[str], limit_s: float,
           note: str) -> Run:
    """GET keys one request each from POOL_THREADS threads until done or `limit_s`."""
    lock = threading.Lock()
    cursor = [0]
    got = [0, 0]
    deadline = time.monotonic() + limit_s

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = cursor[0]
                cursor[0] += 1
            if index >= len(keys):
                return
            data = get(keys[index])
            with lock:
                got[0] += 1
                got[1] += len(data)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(POOL_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Run(name, got[0], time.perf_counter() - start, got[1], note)


# ----- batch runs ------------------------------------------------------------------------
def batch_gets(client: Client, urls: Sequence[str], call: int, limit_s: float,
               name: str) -> Run:
    start = time.perf_counter()
    deadline = time.monotonic() + limit_s
    count = total = 0
    for first in range(0, len(urls), call):
        for data in client.get_batch(urls[first:first + call]):
            assert data is not None
            total += len(data)
            count += 1
        if time.monotonic() > deadline:
            break
    return Run(name, count, time.perf_counter() - start, total,
               f"{call} URLs per call, client batch_size 1000, 4 requests in flight")


DEFAULT_FETCH_THREADS = PrefetchSettings().fetch_threads


def preread(client: Client, urls: Sequence[str], limit_s: float,
            fetch_threads: int = DEFAULT_FETCH_THREADS) -> Run:
    settings = PrefetchSettings(batch_items=1000, lookahead_batches_max=8,
                                fetch_threads=fetch_threads)
    start = time.perf_counter()
    deadline = time.monotonic() + limit_s
    count = total = 0
    with PrefetchCache(client.fetch_batch, settings) as cache:
        cache.plan(urls)
        for first in range(0, len(urls), DATALOADER_BATCH):
            for data in cache.get_many(urls[first:first + DATALOADER_BATCH]):
                assert data is not None
                total += len(data)
                count += 1
            if time.monotonic() > deadline:
                break
        stats = cache.stats()
    note = (f"PrefetchCache batches of 1000, {fetch_threads} fetching, read 256 at a time; "
            f"hits {stats.hits}, misses {stats.misses}, waits {stats.waits}")
    name = "petrel pre-read cache" if fetch_threads == DEFAULT_FETCH_THREADS else \
        f"petrel pre-read cache, {fetch_threads} fetch thread{'s' if fetch_threads > 1 else ''}"
    return Run(name, count, time.perf_counter() - start, total, note)


# ----- DataLoader runs -------------------------------------------------------------------
class BotoDataset(torch.utils.data.Dataset[bytes]):
    """What users write today: one boto3 get_object per sample, a client per worker."""

    def __init__(self, endpoint: str, keys: Sequence[str]) -> None:
        self.endpoint = endpoint
        self.keys = list(keys)
        self._client: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> bytes:
        if self._client is None or self._client[0] != os.getpid():
            self._client = (os.getpid(), boto_client(self.endpoint))
        body: bytes = self._client[1].get_object(Bucket=BUCKET, Key=self.keys[index])["Body"].read()
        return body


class FileDataset(torch.utils.data.Dataset[bytes]):
    def __init__(self, root: str, keys: Sequence[str]) -> None:
        self.paths = [os.path.join(root, k) for k in keys]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as handle:
            return handle.read()


def _keep(batch: list[bytes]) -> list[bytes]:
    return batch


def dataloader(name: str, dataset: torch.utils.data.Dataset[bytes], sampler: EpochSampler,
               limit_s: float, note: str) -> Run:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=DATALOADER_BATCH, sampler=sampler, num_workers=DATALOADER_WORKERS,
        collate_fn=_keep, multiprocessing_context="fork", timeout=120)
    start = time.perf_counter()
    deadline = time.monotonic() + limit_s
    count = total = 0
    for batch in loader:  # bounded: one epoch, or the time limit
        count += len(batch)
        total += sum(len(b) for b in batch)
        if time.monotonic() > deadline:
            break
    return Run(name, count, time.perf_counter() - start, total, note)


# ----- one size ---------------------------------------------------------------------------
BATCH_GATEWAY = "petrel Client.get_batch, through the gateway"
BATCH_LOCAL = "petrel Client.get_batch, short-circuit reads"
LOADER_LOCAL = "DataLoader, petrel.torch.Dataset, short-circuit reads"
LOADER_GATEWAY = "DataLoader, petrel.torch.Dataset, through the gateway"
LOADER_FILES = "DataLoader, local files"


def run_size(size: int, plan: Plan, client: Client, gateway_client: Client, petrel: Server,
             weed: Server, files_root: str, log: Callable[[str], None]) -> SizeResult:
    """`client` reads with short-circuit reads, `gateway_client` through the gateway."""
    count, weed_count = plan.objects[size], plan.weed_objects[size]
    keys = keys_for(size, count)
    pool = os.urandom(max(4 << 20, 4 * size))
    log(f"{size} B: storing {count} objects in petrel, {weed_count} in SeaweedFS, "
        f"{count} local files")
    store_petrel(client, size, keys, pool)
    weed_s3 = boto_client(weed.endpoint)
    store_boto(weed_s3, size, keys[:weed_count], pool)
    store_files(files_root, size, keys, pool)

    sampler = EpochSampler(count, shuffle=True, seed=SEED)
    order = [keys[i] for i in sampler.indices(0)]
    urls = [f"s3://{BUCKET}/{k}" for k in order]
    weed_order = [k for k in order if int(k.rsplit("/", 1)[1][:7]) < weed_count]
    petrel_s3 = boto_client(petrel.endpoint)
    result = SizeResult(size, count)
    runs = result.runs
    limit = plan.per_request_s
    pool_note = f"{POOL_THREADS} threads, one request per object"

    def boto_get(s3: Any) -> Callable[[str], bytes]:
        return lambda key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[no-any-return]

    runs.append(pooled("boto3 GET, petrel", boto_get(petrel_s3), weed_order, limit, pool_note))
    log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    runs.append(pooled("boto3 GET, SeaweedFS", boto_get(weed_s3), weed_order, limit, pool_note))
    log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    runs.append(pooled("petrel Client.get, petrel",
                       lambda key: client.get(f"s3://{BUCKET}/{key}"), weed_order, limit,
                       pool_note))
    log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    for batch_client, name in ((gateway_client, BATCH_GATEWAY), (client, BATCH_LOCAL)):
        runs.append(batch_gets(batch_client, urls, plan.batch_call, plan.batch_s, name))
        log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    runs.append(preread(client, urls, plan.batch_s))
    runs.append(preread(client, urls, plan.batch_s, fetch_threads=1))  # as before 2026-11-24
    log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")

    petrel_urls = [f"s3://{BUCKET}/{k}" for k in keys]
    petrel_ds = Dataset(petrel_urls, conf_path=client.config.path, order=sampler)
    gateway_ds = Dataset(petrel_urls, conf_path=gateway_client.config.path, order=sampler)
    boto_ds = BotoDataset(petrel.endpoint, keys[:weed_count])
    runs.append(dataloader("DataLoader, boto3 get_object per sample (petrel)", boto_ds,
                           EpochSampler(weed_count, seed=SEED), plan.per_request_s,
                           "a boto3 client per worker"))
    log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    turns = [(LOADER_LOCAL, petrel_ds,
              "__getitems__: one batch get per batch, pre-read of the worker's next batches; "
              "records read from the segment files"),
             (LOADER_GATEWAY, gateway_ds, "as above, records read through the gateway"),
             (LOADER_FILES, FileDataset(files_root, keys),
              "open/read per sample, page cache warm (just written)")]
    for number in range(LOADER_ROUNDS):
        # Each round starts with the next of the three, so none is always first.
        for name, dataset, note in turns[number % 3:] + turns[:number % 3]:
            runs.append(dataloader(round_name(name, number), dataset, sampler, plan.batch_s,
                                   note))
            log(f"  {runs[-1].name}: {runs[-1].per_s:,.0f}/s")
    return result


# ----- report -----------------------------------------------------------------------------
def targets(results: list[SizeResult]) -> list[str]:
    lines = []
    for result in results:
        label = f"{result.size_bytes // KiB} KiB"
        boto_petrel = result.rate("boto3 GET, petrel")
        own = result.rate("petrel Client.get, petrel")
        boto_loader = result.rate("DataLoader, boto3 get_object per sample (petrel)")
        files = result.rates(LOADER_FILES)
        checks = []
        for how, batch_name, loader_name in (
                ("through the gateway", BATCH_GATEWAY, LOADER_GATEWAY),
                ("short-circuit reads", BATCH_LOCAL, LOADER_LOCAL)):
            batch = result.rate(batch_name)
            loaders = result.rates(loader_name)
            loader = statistics.median(loaders) if loaders else 0.0
            ratios = [petrel / file for petrel, file in zip(loaders, files, strict=False)
                      if file]
            vs_files = statistics.median(ratios) if ratios else 0.0
            checks += [
                (f"{how}: batch get >= 100,000 objects/s: {batch:,.0f}/s", batch >= 100_000,
                 result.size_bytes == 10 * KiB),
                (f"{how}: batch get >= 10x petrel per-request GET (boto3 pool): "
                 f"{_x(batch, boto_petrel)}", batch >= 10 * boto_petrel, True),
                (f"{how}: batch get >= 10x petrel per-request GET (petrel.Client pool): "
                 f"{_x(batch, own)}", batch >= 10 * own, True),
                (f"{how}: DataLoader >= 20x the boto3 dataset: {_x(loader, boto_loader)} "
                 f"(median of {len(loaders)} rounds)", loader >= 20 * boto_loader, True),
                (f"{how}: DataLoader >= local files: {vs_files:.2f}x, the median of the "
                 f"rounds' ratios ({', '.join(f'{r:.2f}' for r in ratios)})",
                 vs_files >= 1.0, True),
            ]
        for text, met, applies in checks:
            if applies:
                lines.append(f"- {label}: {text}, {'met' if met else 'NOT met'}")
    return lines


def _x(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def markdown(results: list[SizeResult], meta: dict[str, Any]) -> str:
    out = [f"# Loader benchmark ({meta['date']}{', quick' if meta['quick'] else ''})", "",
           f"Command: `{meta['command']}`. Wall time {meta['wall_s'] / 60:.1f} min. "
           "Objects/s = objects delivered into the Python loop per second, shuffled order "
           "(the same permutation for every run of a size). Per-request runs are bounded "
           "in time and read a subset that is also stored in SeaweedFS. Servers on "
           "127.0.0.1 of this machine, sharing its CPUs with the client.", "",
           "## Targets (from issue 5)", "", *targets(results), ""]
    for result in results:
        out += [f"## {result.size_bytes // KiB} KiB objects ({result.objects} stored)", "",
                "| run | objects | seconds | objects/s | MB/s | note |",
                "|---|---:|---:|---:|---:|---|"]
        for run in result.runs:
            out.append(f"| {run.name} | {run.objects} | {run.seconds:.2f} | "
                       f"{run.per_s:,.0f} | {run.bytes / run.seconds / 1e6:,.1f} | {run.note} |")
        out.append("")
    out += machine_lines(meta["machine"], meta["load_end"])
    return "\n".join(out) + "\n"


# ----- one row of python -m bench (bench/side_by_side.py) ------------------------------------
def side_by_side_rows(endpoint: str, access_key: str, secret_key: str, size: int,
                      objects: int, duration_s: float) -> list[dict[str, Any]]:
    """The DataLoader (batch 256, 2 workers) over petrel.torch.Dataset against a running
    gateway, as rows of bench/side_by_side.py's table: `objects` objects of `size`
    bytes are stored, then read in a shuffled epoch (bounded by `duration_s`)."""
    with tempfile.TemporaryDirectory(prefix="petrel-bench-loader-") as work:
        conf = write_conf(os.path.join(work, "petreloss.conf"), endpoint, access_key,
                          secret_key)
        client = Client(conf, batch_size=1000)
        client.create_bucket(f"s3://{BUCKET}")
        keys = keys_for(size, objects)
        store_petrel(client, size, keys, os.urandom(max(4 << 20, 4 * size)))
        sampler = EpochSampler(objects, shuffle=True, seed=SEED)
        dataset = Dataset([f"s3://{BUCKET}/{k}" for k in keys], conf_path=conf, order=sampler)
        run = dataloader("DataLoader", dataset, sampler, max(duration_s * 4, 30.0), "")
        client.close()
    rate = run.per_s
    return [{"workload": "PyTorch DataLoader", "system": "petrel", "size": size,
             "requests_per_s": rate / DATALOADER_BATCH, "objects_per_s": rate,
             "mb_per_s": run.bytes / run.seconds / 1e6 if run.seconds else 0.0,
             "p50_ms": None, "p99_ms": None, "errors": 0, "durability": "batch",
             "how": f"torch DataLoader, batch {DATALOADER_BATCH}, {DATALOADER_WORKERS} "
                    "workers, petrel.torch.Dataset (one batch get per batch, pre-read; "
                    "short-circuit reads, the default on the gateway's machine)"}]


# ----- main -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k objects, short limits")
    parser.add_argument("--sizes", default="", help="comma-separated KiB, e.g. 10")
    parser.add_argument("--work-dir", default="", help="data directory (default: a tmp dir)")
    parser.add_argument("--out", default="bench/results", help="results directory")
    parser.add_argument("--processes", type=int, default=0,
                        help="petrel serve --processes (default 0: one per core)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    sizes = tuple(int(s) * KiB for s in args.sizes.split(",") if s) or plan.sizes_bytes
    work = args.work_dir or tempfile.mkdtemp(prefix="petrel-bench-loader-")
    machine = describe(work)
    started = time.monotonic()
    command = "python -m bench.loader" + (f" {' '.join(argv)}" if argv else "")

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {line}", flush=True)

    servers: list[Server] = []
    results: list[SizeResult] = []
    try:
        petrel = start_petrel("petrel", os.path.join(work, "petrel"), "batch", CREDS, work,
                              args.processes)
        servers.append(petrel)
        weed = start_seaweedfs("seaweedfs", os.path.join(work, "weed"), CREDS, work)
        servers.append(weed)
        conf, gateway_conf = (
            write_conf(os.path.join(work, name), petrel.endpoint, CREDS.access_key,
                       CREDS.secret_key, short_circuit)
            for name, short_circuit in (("petreloss.conf", True),
                                        ("petreloss-gateway.conf", False)))
        client = Client(conf, batch_size=1000)
        gateway_client = Client(gateway_conf, batch_size=1000)
        client.create_bucket(f"s3://{BUCKET}")
        boto_client(weed.endpoint).create_bucket(Bucket=BUCKET)
        for size in sizes:
            results.append(run_size(size, plan, client, gateway_client, petrel, weed,
                                    os.path.join(work, "files"), log))
    finally:
        for server in servers:
            stop(server)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    date = datetime.date.today().isoformat()
    meta = {"date": date, "quick": args.quick, "command": command, "machine": machine,
            "wall_s": time.monotonic() - started, "load_end": load_average()}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"loader-{date}{'-quick' if args.quick else ''}")
    with open(stem + ".md", "w", encoding="utf-8") as handle:
        handle.write(markdown(results, meta))
    with open(stem + ".json", "w", encoding="utf-8") as handle:
        json.dump({**{k: v for k, v in meta.items() if k != "machine"},
                   "machine": asdict(machine),
                   "results": [{"size_bytes": r.size_bytes, "objects": r.objects,
                                "runs": [{**asdict(run), "per_s": run.per_s} for run in r.runs]}
                               for r in results]}, handle, indent=2)
    log(f"wrote {stem}.md and .json")
    print("\n".join(targets(results)))


if __name__ == "__main__":
    main()
