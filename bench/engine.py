"""Engine benchmark: petrel in-process against one-file-per-object on the same disk.

    python -m bench.engine            # full run (5-10 min on 2 cores, load-dependent)
    python -m bench.engine --quick    # under 2 min: fewer objects, smaller index and tail

Measures, in one run: put and get throughput at each object size for petrel and the
filesystem peer (and their ratios), index bytes and RSS per object at 1M objects, and
recovery time per GiB of unsealed segment tail; then cProfiles the 10 KiB hot loops.
Writes `<out>/engine-<date>.md` and `.json` (`-quick` added for --quick) and prints a
compact table. Scratch data goes under --data-dir and is removed as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import index_size, profiles, replay
from bench import throughput as tp
from bench.machine import describe, load_average
from bench.report import Results, Settings, compact_table, markdown, to_json
from bench.workload import Budget, in_fresh_process, parse_size, size_label

MiB = 1024 * 1024
_HERE = os.path.dirname(os.path.abspath(__file__))
# Objects at or above this size use count // LARGE_COUNT_DIVISOR objects (disk, time).
LARGE_SIZE_BYTES = 64 * 1024
LARGE_COUNT_DIVISOR = 5


@dataclass(frozen=True, slots=True)
class Defaults:
    count: int
    index_objects: int
    replay_mib: int
    write_budget_s: float
    repeats: int
    profile_count: int
    profile_replay_mib: int


FULL = Defaults(
    count=100_000,
    index_objects=1_000_000,
    replay_mib=1024,
    write_budget_s=6.0,
    repeats=3,
    profile_count=20_000,
    profile_replay_mib=128,
)
QUICK = Defaults(
    count=10_000,
    index_objects=100_000,
    replay_mib=256,
    write_budget_s=1.5,
    repeats=3,
    profile_count=5_000,
    profile_replay_mib=64,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small run (~2 min): 10k objects, 100k index, 256 MiB tail",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="objects per size below 64 KiB (default 100000, quick 10000);"
        f" larger sizes use count // {LARGE_COUNT_DIVISOR}",
    )
    parser.add_argument(
        "--sizes", default="1k,10k,100k", help="object sizes, comma-separated (default 1k,10k,100k)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join(_HERE, "results"),
        help="directory for engine-<date>.md/.json (default bench/results)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.path.join(_HERE, "results", "tmp"),
        help="scratch directory, removed at the end (default bench/results/tmp, git-ignored)",
    )
    parser.add_argument(
        "--index-objects",
        type=int,
        default=None,
        help="objects for the index-size stage (default 1000000, quick 100000; 0 skips it)",
    )
    parser.add_argument(
        "--replay-mib",
        type=int,
        default=None,
        help="MiB of unsealed tail for the recovery stage (default 1024, quick 256; 0 skips it)",
    )
    parser.add_argument(
        "--write-budget-s",
        type=float,
        default=None,
        help="seconds per durable-write measure, split over the rounds (default 6, quick 1.5)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="read rounds (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile stage")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    defaults = QUICK if args.quick else FULL
    count = args.count or defaults.count
    budget_s = args.write_budget_s or defaults.write_budget_s
    plans = []
    for text in args.sizes.split(","):
        size = parse_size(text)
        objects = count // LARGE_COUNT_DIVISOR if size >= LARGE_SIZE_BYTES else count
        repeats = args.repeats or defaults.repeats
        plans.append(tp.SizePlan(size, objects, Budget(objects, budget_s / repeats), repeats))
    return Settings(
        quick=args.quick,
        sizes=plans,
        index_objects=_chosen(args.index_objects, defaults.index_objects),
        replay_bytes=_chosen(args.replay_mib, defaults.replay_mib) * MiB,
        profile_count=0 if args.no_profile else min(count, defaults.profile_count),
        repeats=args.repeats or defaults.repeats,
    )


def _chosen(value: int | None, default: int) -> int:
    return default if value is None else value


def run(settings: Settings, data_dir: str, command: str) -> Results:
    started = time.monotonic()
    results = Results(datetime.date.today().isoformat(), command, describe(data_dir), settings)
    for plan in settings.sizes:
        _say(f"{size_label(plan.size_bytes)}: {plan.count:,} objects")
        results.sizes.append(asyncio.run(tp.run_size(plan, os.path.join(data_dir, "sizes"))))
    if settings.index_objects:
        _say(f"index size at {settings.index_objects:,} objects")
        results.index = in_fresh_process(
            index_size.measure, os.path.join(data_dir, "index"), settings.index_objects
        )
    if settings.replay_bytes:
        _say(f"recovery of a {settings.replay_bytes // MiB} MiB tail")
        results.replay = in_fresh_process(
            replay.measure, os.path.join(data_dir, "replay"), settings.replay_bytes
        )
    if settings.profile_count:
        _say("profiles")
        profile_mib = (QUICK if settings.quick else FULL).profile_replay_mib
        results.profiles = asyncio.run(
            profiles.run(
                os.path.join(data_dir, "profile"), settings.profile_count, profile_mib * MiB
            )
        )
    results.load_average_end = load_average()
    results.wall_seconds = time.monotonic() - started
    return results


def write_results(results: Results, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    stem = f"engine-{results.date}" + ("-quick" if results.settings.quick else "")
    path = os.path.join(out_dir, stem + ".md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(markdown(results))
    with open(os.path.join(out_dir, stem + ".json"), "w", encoding="utf-8") as handle:
        handle.write(to_json(results))
    return path


def _say(message: str) -> None:
    print(f"[bench] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    command = "python -m bench.engine " + shlex.join(sys.argv[1:] if argv is None else argv)
    data_dir = os.path.abspath(args.data_dir)
    try:
        results = run(settings, data_dir, command.strip())
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    path = write_results(results, args.out)
    print(compact_table(results))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
