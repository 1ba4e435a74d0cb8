"""A/B of the gateway's batch get between a git revision and the working tree, measured
alternately on this machine.

    python -m bench.ab --before HEAD~1                  # 100k objects of 10 KiB, 5 pairs
    python -m bench.ab --before ce34650 --pairs 9 --objects 50000 --size 1024

Why alternate: this machine is shared, and the same pass run minutes apart moves by a
third (the gateway's CPU per object too). Two gateways run side by side, one from a
worktree of `--before` (made here, removed at the end), one from this tree; each gets
the same objects, then passes alternate between them. A pass is a fresh
`petrel.Client` (new connections, which the kernel spreads over the gateway's processes
anew: one cause of the spread) reading every object once in one shuffled order with
`get_batch`, `--call` URLs per call. Reported per pass: objects/s and the gateway's
CPU microseconds per object (all its processes); then the after/before ratio of each
consecutive pair, and their median. Only the gateway differs between the two: the
client is this tree's in both.

Pairs alternate which side goes first (before-after, after-before, ...), after both
gateways have gone quiet from storing. Results go to stdout and, with --out DIR, to
DIR/ab-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.machine import describe, load_average
from bench.report import machine_lines
from bench.s3_servers import (
    Credentials,
    Server,
    SourceTree,
    cpu_seconds,
    start_petrel,
    stop,
    tree_cpu_seconds,
)
from bench.workload import window_payload
from petrel.client import Client

CREDS = Credentials("PKBENCHAB00000000001", "bench-ab-secret-key-0123456789abcdefgh")
BUCKET = "bench-ab"
SEED = 4321
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True, slots=True)
class Pass:
    side: str  # "before" or "after"
    objects_per_s: float
    server_us_per_object: float
    client_us_per_object: float


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def _client(work: str, name: str, server: Server, batch_size: int = 1000) -> Client:
    conf = os.path.join(work, f"{name}.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(f"[DEFAULT]\ndefault_cluster = ab\n[ab]\nhost_base = {server.endpoint}\n"
                     f"access_key = {CREDS.access_key}\nsecret_key = {CREDS.secret_key}\n")
    return Client(conf, batch_size=batch_size)


def _store(client: Client, urls: Sequence[str], size: int) -> None:
    pool = os.urandom(max(4 << 20, 4 * size))
    client.create_bucket(f"s3://{BUCKET}")
    for first in range(0, len(urls), 1000):
        client.put_batch([(url, window_payload(size, i, pool))
                          for i, url in enumerate(urls[first:first + 1000], first)])


def one_pass(side: str, server: Server, client: Client, order: Sequence[str],
             call: int) -> Pass:
    client.get_batch(order[:call])  # connections made before the clock starts
    server_0, client_0 = tree_cpu_seconds(server.pid), cpu_seconds(os.getpid())
    start = time.perf_counter()
    count = 0
    for first in range(0, len(order), call):
        count += len(client.get_batch(order[first:first + call]))
    elapsed = time.perf_counter() - start
    server_s = tree_cpu_seconds(server.pid) - server_0
    client_s = cpu_seconds(os.getpid()) - client_0
    return Pass(side, count / elapsed, 1e6 * server_s / count, 1e6 * client_s / count)


def settle(server: Server, idle_fraction: float = 0.05, limit_s: float = 60.0) -> None:
    """Wait (at most `limit_s`) until the gateway uses under `idle_fraction` of a core
    over a second: index flushes and compactions after the stores are done."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        used = tree_cpu_seconds(server.pid)
        time.sleep(1.0)
        if tree_cpu_seconds(server.pid) - used < idle_fraction:
            return


def report(args: argparse.Namespace, before_rev: str, after_desc: str,
           pairs: list[tuple[Pass, Pass]], machine_md: list[str]) -> str:
    lines = [f"# Gateway A/B, batch get ({datetime.date.today().isoformat()})", "",
             f"Command: `python -m bench.ab {' '.join(sys.argv[1:])}`. before = {before_rev}, "
             f"after = {after_desc}. {args.objects:,} objects of {args.size:,} bytes in each "
             f"gateway (`petrel serve`, default processes, durability batch); each pass "
             f"reads all of them once, shuffled, {args.call} URLs per get_batch call "
             f"(client batch_size {args.batch_size}, 4 requests in flight), with a fresh "
             "client.", "",
             "Pairs run before-after, then after-before, and so on.", "",
             "| pair | side | objects/s | gateway CPU us/object | client CPU us/object |",
             "|---:|---|---:|---:|---:|"]
    for number, pair in enumerate(pairs, 1):
        for one in pair:
            lines.append(f"| {number} | {one.side} | {one.objects_per_s:,.0f} | "
                         f"{one.server_us_per_object:.1f} | {one.client_us_per_object:.1f} |")
    ratios = [after.objects_per_s / before.objects_per_s for before, after in pairs]
    cpu_ratios = [after.server_us_per_object / before.server_us_per_object
                  for before, after in pairs]
    median = statistics.median(ratios)
    lines += ["", f"- after/before objects/s, per pair: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median **{median:.2f}**, "
              f"{sum(r > 1 for r in ratios)} of {len(ratios)} pairs faster after",
              f"- after/before gateway CPU per object, per pair: "
              f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}; median "
              f"**{statistics.median(cpu_ratios):.2f}**", "", *machine_md]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--call", type=int, default=4000, help="URLs per get_batch call")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="the client's batch_size: keys per batch request")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.objects < args.call or args.size < 1:
        parser.error("--pairs >= 1, --objects >= --call and --size >= 1")
    before_rev = _git("rev-parse", "--short", args.before)
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    after_desc = _git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty
                                                         else "")
    work = tempfile.mkdtemp(prefix="petrel-bench-ab-")
    tree = os.path.join(work, "before-tree")
    servers: dict[str, Server] = {}
    try:
        _git("worktree", "add", "--detach", tree, before_rev)
        source = SourceTree.link(tree, work)
        servers["before"] = start_petrel("before", os.path.join(work, "before"), "batch",
                                         CREDS, work, source=source)
        servers["after"] = start_petrel("after", os.path.join(work, "after"), "batch",
                                        CREDS, work)
        urls = [f"s3://{BUCKET}/ab/{i:08d}" for i in range(args.objects)]
        for side, server in servers.items():
            client = _client(work, side, server)
            _store(client, urls, args.size)
            client.close()
        order = list(urls)
        random.Random(SEED).shuffle(order)
        for server in servers.values():
            settle(server)
        pairs: list[tuple[Pass, Pass]] = []
        for number in range(args.pairs):
            # ABBA: which side goes first alternates, so that neither always follows the
            # other (caches warmed, background work left running).
            sides = ("before", "after") if number % 2 == 0 else ("after", "before")
            done: dict[str, Pass] = {}
            for side in sides:
                client = _client(work, side, servers[side], args.batch_size)
                done[side] = one_pass(side, servers[side], client, order, args.call)
                client.close()
                print(f"{side}: {done[side].objects_per_s:,.0f} objects/s, gateway "
                      f"{done[side].server_us_per_object:.1f} us/object", flush=True)
            pairs.append((done["before"], done["after"]))
        machine_md = machine_lines(describe(work), load_average())
    finally:
        for server in servers.values():
            stop(server)
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, before_rev, after_desc, pairs, machine_md)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"ab-{datetime.date.today().isoformat()}.md")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
