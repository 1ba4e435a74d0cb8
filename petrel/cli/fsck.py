"""`petrel fsck`: verify every record's checksum in every segment; with
`--quarantine DIR`, set corrupt records aside; with `--rebuild-index`, rebuild the index
from the segments alone.

Quarantine copies every corrupt byte range (a whole segment when its framing cannot be
read) into DIR with a `quarantine.json` that lists them and the objects they held, and
deletes those objects (a tombstone, as DeleteObject writes), so they read as missing
(404) instead of failing every read with a corruption error. Restore them from their
source; `quarantine.json` names them.

Run it with the gateway stopped: it opens the data directory directly. Exit status 0
when everything checks out, 1 when corruption was found, 2 on a usage error or when
the backend cannot be read.

The backend is named as for `petrel serve`: --backend s3://BUCKET/PREFIX with
--backend-endpoint, --backend-region, --backend-path-style, or a --config file's
[backend] section, credentials from PETREL_BACKEND_ACCESS_KEY/_SECRET_KEY or the file.
With an S3 backend and a lost local disk, `--rebuild-index` on an empty (or new) data
directory rebuilds the index of everything sealed from the bucket alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from petrel.backends.base import Backend
    from petrel.settings import StoreConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from petrel.cli.serve import add_backend_arguments

    parser.add_argument("--data", required=True, help="data directory")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="replace the index with one rebuilt from segments")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quarantine", metavar="DIR",
                        help="copy corrupt records into DIR and delete the objects that "
                             "pointed at them (they then read as missing)")
    parser.add_argument("--config", help="TOML configuration file (its [backend] section)")
    add_backend_arguments(parser)


@dataclass
class FsckReport:
    segments: int = 0
    records: int = 0
    bytes_checked: int = 0
    corrupt_segments: list[str] = field(default_factory=list)
    corrupt_ranges: list[tuple[str, int, int]] = field(default_factory=list)
    rebuilt_objects: int | None = None
    # Where each segment was read from (a local path or a blob name) -> its id.
    segment_ids: dict[str, int] = field(default_factory=dict)
    quarantined_objects: list[str] = field(default_factory=list)


def verify(data_dir: str, backend: Backend) -> FsckReport:
    """Scan every local and backend segment, decoding and checksumming every record."""
    from petrel import format as fmt
    from petrel.errors import CorruptionError
    from petrel.recovery import segment_dir
    from petrel.segments import list_local_segments, local_segment_path, scan_file, scan_records

    report = FsckReport()
    local_dir = segment_dir(data_dir)
    local_ids = set(list_local_segments(local_dir)) if os.path.isdir(local_dir) else set()
    for local_id in sorted(local_ids):
        path = os.path.abspath(local_segment_path(local_dir, local_id))
        report.segments += 1
        report.segment_ids[path] = local_id
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
        report.segment_ids[name] = segment_id
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
    return report


def quarantine(report: FsckReport, config: StoreConfig, backend: Backend,
               directory: str) -> None:
    """Copy the corrupt ranges into `directory`, delete the objects whose current
    version lies in one (tombstones, durable), and write quarantine.json."""
    import asyncio

    from petrel import index as ix
    from petrel.store import Store

    os.makedirs(directory, exist_ok=True)
    whole = {problem.split(": ", 1)[0] for problem in report.corrupt_segments}
    bad: dict[int, list[tuple[int, int]]] = {}  # segment id -> corrupt [start, end)
    copies: list[tuple[str, int, int | None]] = []
    for where in sorted(whole):
        bad.setdefault(report.segment_ids[where], []).append((0, 2**63))
        copies.append((where, 0, None))
    for where, first, last in report.corrupt_ranges:
        bad.setdefault(report.segment_ids[where], []).append((first, last))
        copies.append((where, first, last))
    files = []
    for where, start, end in copies:
        target = os.path.join(directory, f"{os.path.basename(where)}@{start}-{end or 'end'}.bin")
        if os.path.isabs(where):
            with open(where, "rb") as source:
                source.seek(start)
                data = source.read(-1 if end is None else end - start)
        else:
            size = backend.size(where)
            stop = size if end is None else min(end, size)
            data = backend.get_range(where, start, stop - start)
        with open(target, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        files.append({"from": where, "start": start, "end": end, "file": target})

    async def delete_affected() -> list[str]:
        store = await Store.open(config)  # its own backend: ours stays open
        try:
            names = {row.bucket_id: name for name, row in store.applier.buckets.items()}
            doomed: list[tuple[str, str]] = []
            for bucket_id, raw_key, entry in ix.Index(store.kv).iter_all_objects():
                location = entry.location
                ranges = bad.get(location.segment_id, ())
                if any(start < location.offset + location.length and location.offset < end
                       for start, end in ranges) and bucket_id in names:
                    doomed.append((names[bucket_id], raw_key.decode("utf-8", "replace")))
            for bucket, name in doomed:
                await store.delete_object(bucket, name)
            return [f"{bucket}/{name}" for bucket, name in doomed]
        finally:
            await store.close()

    report.quarantined_objects = asyncio.run(delete_affected())
    with open(os.path.join(directory, "quarantine.json"), "w", encoding="utf-8") as handle:
        json.dump({"files": files, "objects": report.quarantined_objects}, handle, indent=2)


def backend_config(args: argparse.Namespace) -> StoreConfig:
    """A StoreConfig naming the backend that the flags, environment and --config give
    (raises ConfigError)."""
    from petrel.cli.serve import build_backend, load_options
    from petrel.settings import StoreConfig

    options = load_options(args, dict(os.environ))
    # No read cache: fsck reads every segment once.
    return StoreConfig(data_dir=os.path.abspath(args.data), backend=build_backend(options),
                       read_cache_bytes_max=0)


def run(args: argparse.Namespace) -> int:
    from petrel.backends.factory import open_backend
    from petrel.cli.serve import ConfigError
    from petrel.errors import BackendError
    from petrel.recovery import rebuild_index

    try:
        config = backend_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"petrel fsck: configuration error: {exc}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.data):
        if config.backend is None or not args.rebuild_index:
            print(f"petrel fsck: no data directory {args.data}", file=sys.stderr)
            return 2
        os.makedirs(args.data)  # the local disk was lost: rebuild from the bucket
    backend = open_backend(config)
    try:
        report = verify(args.data, backend)
        if args.quarantine and (report.corrupt_segments or report.corrupt_ranges):
            quarantine(report, config, backend, args.quarantine)
        if args.rebuild_index:
            report.rebuilt_objects = rebuild_index(args.data, backend).objects
    except BackendError as exc:
        print(f"petrel fsck: the backend failed: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"segments {report.segments}, records {report.records}, "
              f"bytes checked {report.bytes_checked}")
        for problem in report.corrupt_segments:
            print(f"CORRUPT segment {problem}")
        for where, start, end in report.corrupt_ranges:
            print(f"CORRUPT bytes {start}..{end} in {where}")
        for name in report.quarantined_objects:
            print(f"QUARANTINED {name} (deleted; its bytes are in {args.quarantine})")
        if report.rebuilt_objects is not None:
            print(f"index rebuilt: {report.rebuilt_objects} objects")
    return 1 if report.corrupt_segments or report.corrupt_ranges else 0
