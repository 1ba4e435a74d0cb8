"""Listing a bucket of a million keys, paged, with the gateway's memory watched
(issue 9, item 4):

    python -m bench.list_million [--keys 1000000] [--max-keys 1000] [--out FILE.md]

Starts a gateway as the README does on a temporary data directory, fills one bucket
through the batch API (1000 keys per request), then lists it whole with ListObjectsV2
pages, sampling the gateway's resident memory. Prints fill and list rates, pages, and
RSS before and at most during the listing; exit status 1 if a key is missing, repeated
or out of order, or the RSS grew by more than --rss-growth-max-mib while paging.
The CI version (50,000 keys) is in tests/reliability/test_hostile_input.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

from petrel.testing.bigbucket import fill, page_all
from petrel.testing.gateway import start_gateway, stop_gateway
from petrel.testing.s3raw import S3Raw

ACCESS_KEY, SECRET_KEY = "PKLISTMILLION0000001", "list-million-secret-0123456789abcdefgh"
MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--max-keys", type=int, default=1000)
    parser.add_argument("--rss-growth-max-mib", type=float, default=64.0)
    parser.add_argument("--out", help="write the result table here too (Markdown)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="petrel-list-million-")
    gateway = start_gateway(f"{work}/data", "--access-key", ACCESS_KEY, "--secret-key",
                            SECRET_KEY, "--durability", "none")
    try:
        with S3Raw(gateway.endpoint, ACCESS_KEY, SECRET_KEY, timeout_s=300) as s3:
            s3.create_bucket("million")
            fill_s = fill(s3, "million", args.keys)
            print(f"filled {args.keys} keys in {fill_s:.1f} s ({args.keys / fill_s:,.0f}/s)",
                  flush=True)
            run = page_all(s3, "million", gateway.process.pid, args.keys, args.max_keys,
                           sample_every_pages=10)
    finally:
        stop_gateway(gateway, timeout_s=120)
        shutil.rmtree(work, ignore_errors=True)
    growth_mib = run.rss_growth_bytes / MiB
    table = (f"| keys | pages | listed in order | list s | keys/s | RSS before MiB | "
             f"RSS max MiB | growth MiB |\n|---|---|---|---|---|---|---|---|\n"
             f"| {run.keys} | {run.pages} | {run.in_order} | {run.seconds:.1f} | "
             f"{run.keys / run.seconds:,.0f} | {run.rss_before_bytes / MiB:.0f} | "
             f"{run.rss_max_bytes / MiB:.0f} | {growth_mib:.1f} |\n")
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(table)
    ok = run.in_order and run.keys == args.keys and growth_mib <= args.rss_growth_max_mib
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
