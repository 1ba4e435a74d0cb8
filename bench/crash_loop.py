"""Crash and restart under load (issue 9, item 2), the long version:

    python -m bench.crash_loop --rounds 50 [--work-dir DIR] [--threads 6] [--seed N]

Each round starts the gateway as the README does (`python -m petrel serve --data DIR`),
runs mixed load (PUT, overwrite, DELETE, batch put), SIGKILLs the gateway at a random
moment, restarts it and checks that every acknowledged write is present and
byte-identical (petrel/testing/crashloop.py describes the model). Prints one line per
round and a Markdown table; `--out FILE.md` also writes the table. Exit status 1 if
anything was lost or wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from petrel.testing.crashloop import CrashLoop, Options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--keys-per-thread", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20260911)
    parser.add_argument("--work-dir", help="data directory parent (default: a temporary "
                                           "directory, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--out", help="write the Markdown table here too")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="petrel-crash-loop-")
    options = Options(work_dir=work_dir, rounds=args.rounds, threads=args.threads,
                      keys_per_thread=args.keys_per_thread, seed=args.seed)
    started = time.monotonic()
    try:
        summary = CrashLoop(options).run()
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    wall_s = time.monotonic() - started
    table = summary.table() + f"\n\nwall time {wall_s:.0f} s, seed {args.seed}\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(table)
    for problem in summary.problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if summary.problems else 0


if __name__ == "__main__":
    sys.exit(main())
