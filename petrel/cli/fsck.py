"""`petrel fsck`: verify every record's checksum in every segment; with
`--rebuild-index`, rebuild the index from the segments alone.

Run it with the gateway stopped: it opens the data directory directly. Exit status 0
when everything checks out, 1 when corruption was found, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data directory")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="replace the index with one rebuilt from segments")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


@dataclass
class FsckReport:
    segments: int = 0
    records: int = 0
    bytes_checked: int = 0
    corrupt_segments: list[str] = field(default_factory=list)
    corrupt_ranges: list[tuple[str, int, int]] = field(default_factory=list)
    rebuilt_objects: int | None = None


def verify(data_dir: str) -> FsckReport:
    """Scan every local and backend segment, decoding and checksumming every record."""
    from petrel import format as fmt
    from petrel.backends.local import LocalBackend
    from petrel.errors import CorruptionError
    from petrel.recovery import segment_dir
    from petrel.segments import list_local_segments, local_segment_path, scan_file, scan_records

    report = FsckReport()
    backend = LocalBackend(os.path.join(data_dir, "blobs"))
    local_dir = segment_dir(data_dir)
    local_ids = set(list_local_segments(local_dir)) if os.path.isdir(local_dir) else set()
    for local_id in sorted(local_ids):
        path = local_segment_path(local_dir, local_id)
        report.segments += 1
        try:
            try:
                _, result = scan_file(path, sealed=True)
            except fmt.CorruptSegment:
                _, result = scan_file(path)
        except CorruptionError as exc:
            report.corrupt_segments.append(f"{path}: {exc}")
            continue
        report.records += len(result.records)
        report.bytes_checked += os.path.getsize(path)
        report.corrupt_ranges += [(path, a, b) for a, b in result.corrupt_ranges]
    for name in backend.list("segments/"):
        segment_id = fmt.segment_id_from_blob_name(name)
        if segment_id is None or segment_id in local_ids:
            continue
        report.segments += 1
        size = backend.size(name)
        data = backend.get_range(name, 0, size)
        try:
            fmt.decode_segment_header(data[: fmt.SEGMENT_HEADER_BYTES])
            trailer = fmt.decode_trailer(data[size - fmt.TRAILER_BYTES :])
            result = scan_records(data, fmt.SEGMENT_HEADER_BYTES, trailer.table_offset)
        except CorruptionError as exc:
            report.corrupt_segments.append(f"{name}: {exc}")
            continue
        report.records += len(result.records)
        report.bytes_checked += size
        report.corrupt_ranges += [(name, a, b) for a, b in result.corrupt_ranges]
    backend.close()
    return report


def run(args: argparse.Namespace) -> int:
    from petrel.backends.local import LocalBackend
    from petrel.recovery import rebuild_index

    if not os.path.isdir(args.data):
        print(f"petrel fsck: no data directory {args.data}", file=sys.stderr)
        return 2
    report = verify(args.data)
    if args.rebuild_index:
        backend = LocalBackend(os.path.join(args.data, "blobs"))
        rebuilt = rebuild_index(args.data, backend)
        backend.close()
        report.rebuilt_objects = rebuilt.objects
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"segments {report.segments}, records {report.records}, "
              f"bytes checked {report.bytes_checked}")
        for problem in report.corrupt_segments:
            print(f"CORRUPT segment {problem}")
        for where, start, end in report.corrupt_ranges:
            print(f"CORRUPT bytes {start}..{end} in {where}")
        if report.rebuilt_objects is not None:
            print(f"index rebuilt: {report.rebuilt_objects} objects")
    return 1 if report.corrupt_segments or report.corrupt_ranges else 0
