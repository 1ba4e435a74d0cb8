"""`petrel bench --qps`: requests per second, bandwidth and latency of any S3 endpoint.

    petrel bench --qps --endpoint http://127.0.0.1:9000 --mode get --size 10KiB \\
        --objects 10000 --concurrency 64 --duration 30 --warmup 5

It creates its bucket if needed, writes the objects it will read (plain PUTs, so any
S3 store works), runs the workload, prints a live line every second and a table at the
end (or JSON with --json), then deletes what it wrote unless --keep. How it generates
load is described in petrel/loadgen.py and printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from petrel.cli.endpoint import add_endpoint_arguments, target_from_args

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
MODES = ("get", "put", "mixed", "batch-get", "batch-put", "list")


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10KiB, 1MB, 512)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_size_range(text: str) -> tuple[int, int]:
    """"10KiB" or "1KiB-100KiB"."""
    low, dash, high = text.partition("-")
    small = parse_size(low)
    large = parse_size(high) if dash else small
    if large < small:
        raise argparse.ArgumentTypeError(f"empty size range {text!r}")
    return small, large


def parse_ratio(text: str) -> float:
    """"9:1" (GETs to PUTs) as the fraction of GETs."""
    gets, colon, puts = text.partition(":")
    try:
        g, p = float(gets), float(puts if colon else 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a ratio: {text!r} (e.g. 9:1)") from None
    if g < 0 or p < 0 or g + p == 0:
        raise argparse.ArgumentTypeError(f"not a ratio: {text!r}")
    return g / (g + p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qps", action="store_true",
                        help="measure requests per second (the only measurement; accepted "
                             "for compatibility with `petrel bench --qps` scripts)")
    add_endpoint_arguments(parser)
    load = parser.add_argument_group("workload")
    load.add_argument("--mode", choices=MODES, default="get")
    load.add_argument("--bucket", default="petrel-bench")
    load.add_argument("--prefix", default="bench/", help="key prefix of the bench objects")
    load.add_argument("--size", type=parse_size_range, default=(10 * 1024, 10 * 1024),
                      help="object size, fixed (10KiB) or a range (1KiB-100KiB)")
    load.add_argument("--objects", type=int, default=1000, help="objects in the key space")
    load.add_argument("--ratio", type=parse_ratio, default=0.9,
                      help="mixed mode: GETs to PUTs, e.g. 9:1")
    load.add_argument("--batch-size", type=int, default=100,
                      help="objects per request in batch modes (petrel only)")
    load.add_argument("--concurrency", type=int, default=64,
                      help="connections in all (each a closed loop)")
    load.add_argument("--processes", type=int, default=min(4, os.cpu_count() or 1),
                      help="load generator processes (connections are split over them)")
    stop = load.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="seconds to measure (default 10)")
    stop.add_argument("--ops", type=int, help="requests to send in all, then stop")
    load.add_argument("--warmup", type=float, default=2.0,
                      help="seconds of load before measuring (with --duration)")
    load.add_argument("--seed", type=int, default=1)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON document")
    out.add_argument("--quiet", action="store_true", help="no live line")
    out.add_argument("--keep", action="store_true",
                     help="leave the bench objects (and bucket) in place")
    out.add_argument("--no-prepare", action="store_true",
                     help="the objects already exist (from an earlier --keep run)")


def run(args: argparse.Namespace) -> int:
    from petrel import loadgen
    from petrel.loadgen import Mode, Plan

    if args.concurrency < 1 or args.processes < 1 or args.objects < 1:
        print("petrel bench: --concurrency, --processes and --objects must be >= 1",
              file=sys.stderr)
        return 2
    try:
        target = target_from_args(args)
    except (ValueError, OSError, KeyError) as exc:
        print(f"petrel bench: {exc}", file=sys.stderr)
        return 2
    processes = min(args.processes, args.concurrency)
    size_min, size_max = args.size
    mode = Mode(args.mode)
    duration = None if args.ops is not None else (args.duration or 10.0)
    plan = Plan(mode, args.bucket, args.prefix, args.objects, size_min, size_max,
                args.concurrency, processes, duration_s=duration, ops=args.ops,
                warmup_s=args.warmup if duration is not None else 0.0,
                get_fraction=args.ratio, batch_size=args.batch_size, seed=args.seed)

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    created = ready = False
    try:
        created = loadgen.ensure_bucket(target, args.bucket)
        ready = True
        if mode is not Mode.PUT and mode is not Mode.BATCH_PUT and not args.no_prepare:
            say(f"preparing {args.objects} objects of {_size_text(size_min, size_max)} "
                f"in {args.bucket}/{args.prefix} ...")
            loadgen.sequential(target, plan, Mode.PUT)
        live = None if args.quiet or args.json else _live_line
        tally = loadgen.run_plan(target, plan, live)
        if live is not None:
            print(file=sys.stderr)
    except (RuntimeError, OSError, loadgen.RequestFailed) as exc:
        print(f"petrel bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if ready and not args.keep:
            try:
                loadgen.sequential(target, plan, Mode.DELETE)
                if created:
                    loadgen.delete_bucket(target, args.bucket)
            except (RuntimeError, OSError, loadgen.RequestFailed) as exc:
                print(f"petrel bench: cleanup failed: {exc}", file=sys.stderr)
    report = _report(args, plan, tally)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report))
    return 0 if tally.ops > 0 else 1


def _live_line(progress: Any) -> None:
    print(f"\r[{progress.elapsed_s:6.1f}s] {progress.ops_per_s:10,.0f} ops/s "
          f"{progress.objects_per_s:10,.0f} objects/s {progress.bytes_per_s / 1e6:9.1f} MB/s "
          f"errors {progress.errors:,}   ", end="", file=sys.stderr, flush=True)


def _size_text(small: int, large: int) -> str:
    def one(n: int) -> str:
        for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
            if n >= scale and n % scale == 0:
                return f"{n // scale}{unit}"
        return f"{n}B"

    return one(small) if small == large else f"{one(small)}-{one(large)}"


def _report(args: argparse.Namespace, plan: Any, tally: Any) -> dict[str, Any]:
    from petrel.loadgen import percentile

    latencies = sorted(tally.latencies)
    elapsed = tally.elapsed_s or 1e-9
    ms = {name: round(percentile(latencies, q) * 1000, 3)
          for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))}
    ms["max"] = round((latencies[-1] if latencies else 0.0) * 1000, 3)
    return {
        "endpoint": args.endpoint or "(petreloss.conf)",
        "mode": plan.mode.value,
        "object_size": _size_text(plan.size_min, plan.size_max),
        "objects": plan.objects,
        "batch_size": plan.batch_size if plan.mode.value.startswith("batch") else None,
        "load": {"processes": plan.processes, "connections": plan.connections,
                 "client": "raw HTTP/1.1 keep-alive over uvloop, presigned URLs "
                           "(batch requests signed per request)"},
        "duration_s": round(elapsed, 3),
        "warmup_s": plan.warmup_s,
        "requests_sent": tally.requests,
        "ops": tally.ops,
        "ops_per_s": round(tally.ops / elapsed, 1),
        "objects_per_s": round(tally.objects / elapsed, 1),
        "mb_per_s": round(tally.bytes / elapsed / 1e6, 2),
        "latency_ms": ms,
        "errors": dict(tally.errors),
        "errors_total": sum(tally.errors.values()),
    }


def _table(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    load = report["load"]
    rows = [
        ("mode", f"{report['mode']} ({report['object_size']} objects"
                 + (f", {report['batch_size']} per request)" if report["batch_size"] else ")")),
        ("load", f"{load['processes']} processes x {load['connections']} connections in all; "
                 f"{load['client']}"),
        ("measured", f"{report['duration_s']:.1f} s after {report['warmup_s']:.0f} s warm-up, "
                     f"{report['ops']:,} requests"),
        ("ops/s", f"{report['ops_per_s']:,.0f}"),
        ("objects/s", f"{report['objects_per_s']:,.0f}"),
        ("MB/s", f"{report['mb_per_s']:,.1f}"),
        ("latency ms", f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
                       f"p99.9 {lat['p99.9']:.2f}  max {lat['max']:.2f}"),
        ("errors", ", ".join(f"{k}: {v:,}" for k, v in sorted(report["errors"].items()))
         or "0"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
