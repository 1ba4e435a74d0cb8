"""Short-circuit reads against reads through the gateway, in alternating pairs.

    python -m bench.short_circuit                     # 100k objects of 10 KiB, 4 pairs
    python -m bench.short_circuit --size 1024 --pairs 6

One petrel gateway on 127.0.0.1 (`petrel serve`, default processes), the objects
stored with batch puts, then `Client.get_batch` over the whole set in one shuffled
order, `--call` URLs per call (client batch_size 1000): through the gateway
(`short_circuit=False`) and with short-circuit reads (petrel.shortcircuit), the two
alternating, the first of each pair alternating too. Per pass: objects/s, and CPU per
object of the client process and of the gateway's processes (from /proc), which say
where the time goes better than objects/s on a shared machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from bench.loader import BUCKET, CREDS, store_petrel, write_conf
from bench.machine import describe
from bench.s3_servers import Server, start_petrel, stop, tree_cpu_seconds
from petrel.client import Client

MODES = (("through the gateway", False), ("short-circuit reads", True))


def one_pass(client: Client, gateway: Server, urls: Sequence[str], call: int
             ) -> tuple[float, float, float]:
    """(objects/s, client CPU us per object, gateway CPU us per object)."""
    gateway_cpu = tree_cpu_seconds(gateway.process.pid)
    client_cpu = time.process_time()
    started = time.perf_counter()
    count = 0
    for first in range(0, len(urls), call):
        for data in client.get_batch(urls[first:first + call]):
            assert data is not None
            count += 1
    seconds = time.perf_counter() - started
    return (count / seconds, (time.process_time() - client_cpu) / count * 1e6,
            (tree_cpu_seconds(gateway.process.pid) - gateway_cpu) / count * 1e6)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=10 * 1024, help="object bytes")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--call", type=int, default=4000, help="URLs per get_batch call")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="petrel-bench-sc-")
    gateway = None
    try:
        gateway = start_petrel("petrel", os.path.join(work, "data"), "batch", CREDS, work)
        conf = write_conf(os.path.join(work, "petreloss.conf"), gateway.endpoint,
                          CREDS.access_key, CREDS.secret_key)
        clients = {local: Client(conf, batch_size=1000, short_circuit=local)
                   for _, local in MODES}
        clients[False].create_bucket(f"s3://{BUCKET}")
        keys = [f"sc/{i:08d}" for i in range(args.objects)]
        store_petrel(clients[False], args.size, keys, os.urandom(max(4 << 20, 4 * args.size)))
        urls = [f"s3://{BUCKET}/{key}" for key in keys]
        random.Random(1).shuffle(urls)
        one_pass(clients[True], gateway, urls[:10_000], args.call)  # warm both paths
        one_pass(clients[False], gateway, urls[:10_000], args.call)
        rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in MODES}
        print(f"{args.objects} objects of {args.size} B, {args.call} URLs per call; "
              f"{describe(work)}", file=sys.stderr)
        for pair in range(args.pairs):
            for name, local in MODES if pair % 2 == 0 else MODES[::-1]:
                rows[name].append(one_pass(clients[local], gateway, urls, args.call))
                rate, client_us, gateway_us = rows[name][-1]
                print(f"pair {pair + 1}, {name}: {rate:,.0f}/s, client {client_us:.1f} us, "
                      f"gateway {gateway_us:.1f} us per object", file=sys.stderr)
    finally:
        if gateway is not None:
            stop(gateway)
        shutil.rmtree(work, ignore_errors=True)
    print("| get_batch | objects/s per pass | median | client CPU us/object (median) | "
          "gateway CPU us/object (median) |")
    print("|---|---|---:|---:|---:|")
    for name, passes in rows.items():
        rates = ", ".join(f"{rate:,.0f}" for rate, _, _ in passes)
        print(f"| {name} | {rates} | {statistics.median(p[0] for p in passes):,.0f} | "
              f"{statistics.median(p[1] for p in passes):.1f} | "
              f"{statistics.median(p[2] for p in passes):.1f} |")
    through = statistics.median(p[0] for p in rows[MODES[0][0]])
    located = statistics.median(p[0] for p in rows[MODES[1][0]])
    print(f"\nshort-circuit / through the gateway: {located / through:.2f}x (medians)")


if __name__ == "__main__":
    main()
