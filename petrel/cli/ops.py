"""`petrel stats` and `petrel compact`: operator commands against a running gateway,
through its signed `/_petrel/` endpoints (gateway/admin.py).

    petrel stats [--json]
    petrel compact [--rate 64MiB] [--dead-fraction 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from petrel.cli.endpoint import add_endpoint_arguments, target_from_args


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    from petrel.cli.bench import parse_size

    add_endpoint_arguments(parser)
    parser.add_argument("--rate", type=parse_size, default=None,
                        help="copy at most this many bytes per second, e.g. 64MiB "
                             "(default: the gateway's compaction_bytes_per_s)")
    parser.add_argument("--dead-fraction", type=float, default=None,
                        help="compact segments at least this dead, 0..1 (default: the "
                             "gateway's compaction_dead_fraction)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")


def _call(args: argparse.Namespace, method: str, path: str, query: str = ""
          ) -> dict[str, Any] | None:
    """The endpoint's JSON, or None after printing why not."""
    from petrel.loadgen import RequestFailed, signed_request

    try:
        target = target_from_args(args)
        status, body = signed_request(target, method, path, query)
    except (ValueError, OSError) as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return None
    except RequestFailed as exc:
        print(f"petrel: cannot reach the gateway: {exc.kind}", file=sys.stderr)
        return None
    if status != 200:
        print(f"petrel: the gateway answered HTTP {status}: "
              f"{body[:500].decode('utf-8', 'replace')}", file=sys.stderr)
        return None
    document: dict[str, Any] = json.loads(body)
    return document


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{n:,} B"
        value /= 1024
    return f"{n:,} B"


def run_stats(args: argparse.Namespace) -> int:
    document = _call(args, "GET", "/_petrel/stats")
    if document is None:
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    store = document["store"]
    total = store["live_bytes"] + store["dead_bytes"]
    rows = [
        ("buckets", f"{store['buckets']:,}"),
        ("objects", f"{store['objects']:,}"),
        ("segments", f"{store['segments']:,} ({store['sealed_segments']:,} sealed)"),
        ("live bytes", _bytes(store["live_bytes"])),
        ("dead bytes", f"{_bytes(store['dead_bytes'])} "
                       f"({store['dead_bytes'] / total:.1%} of segment bytes)"
                       if total else _bytes(0)),
        ("retired", f"{store['retired_segments']:,} compacted segments, "
                    f"{_bytes(store['retired_bytes'])}, deleted after the grace period"),
        ("corruptions", f"{store['corruptions_detected']:,} detected since start"),
    ]
    cache = document.get("backend_cache")
    if cache:
        lookups = cache.get("hits", 0) + cache.get("misses", 0)
        rate = f"{cache.get('hits', 0) / lookups:.1%}" if lookups else "n/a"
        rows.append(("backend cache", f"hit rate {rate} ({cache.get('hits', 0):,} hits, "
                                      f"{cache.get('misses', 0):,} misses)"))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return 0


def run_compact(args: argparse.Namespace) -> int:
    if args.dead_fraction is not None and not 0.0 <= args.dead_fraction <= 1.0:
        print("petrel compact: --dead-fraction must be in [0, 1]", file=sys.stderr)
        return 2
    query = "&".join(part for part in (
        f"dead-fraction={args.dead_fraction}" if args.dead_fraction is not None else "",
        f"rate={args.rate}" if args.rate is not None else "") if part)
    document = _call(args, "POST", "/_petrel/compact", query)
    if document is None:
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"compacted {document['segments_compacted']} segments: "
              f"{document['records_copied']:,} records copied, "
              f"{_bytes(document['bytes_reclaimed'])} reclaimed in {document['seconds']} s; "
              f"dead bytes {_bytes(document['dead_bytes_before'])} -> "
              f"{_bytes(document['dead_bytes_after'])}")
    return 0
