"""Opening a store after a clean stop or a crash, and rebuilding the index from
segments alone.

On open:
* segment files on local disk are matched with their index rows; what an interrupted
  compaction or seal left behind is finished or removed;
* each active segment's records past the index's watermark (`indexed_bytes`) are
  replayed into the index; a torn last record is cut off (it was never acknowledged:
  acknowledgement waits for the record's fsync and its index update);
* if an active segment is shorter than its watermark (durability `none` and a machine
  crash), the index cannot be trusted and is rebuilt from the segments.

`rebuild_index` reads every segment (footers of sealed ones, a scan of unsealed ones)
and builds a fresh index; it needs nothing but the segments.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace

from petrel import format as fmt
from petrel import index as ix
from petrel.apply import Applier
from petrel.backends.base import Backend
from petrel.errors import BlobNotFound, CorruptionError
from petrel.segments import (
    ActiveSegment,
    footer_entries,
    list_local_segments,
    local_segment_path,
    read_footer,
    scan_file,
)
from petrel.settings import StoreConfig

log = logging.getLogger("petrel.recovery")

_APPLY_CHUNK = 4096


@dataclass(slots=True)
class OpenState:
    kv: ix.RocksKV
    index: ix.Index
    applier: Applier
    active: ActiveSegment | None
    rolled: list[ActiveSegment]
    local: dict[int, ActiveSegment]
    seq: int
    replayed_records: int = 0
    cut_bytes: int = 0
    rebuilt: bool = False
    dead_blobs: list[str] = field(default_factory=list)
    orphan_records: list[tuple[bytes, fmt.Location]] = field(default_factory=list)


def index_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "index")


def segment_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "segments")


def _apply_chunks(applier: Applier, kv: ix.RocksKV, entries: list[fmt.FooterEntry]
                  ) -> list[tuple[bytes, fmt.Location]]:
    """Apply in bounded batches; returns the large objects' pointer records that lost
    their last reference (their blobs can go)."""
    orphans: list[tuple[bytes, fmt.Location]] = []
    for start in range(0, len(entries), _APPLY_CHUNK):
        applied = applier.apply(entries[start : start + _APPLY_CHUNK])
        kv.write(applied.ops)
        orphans.extend(applied.orphan_records)
    return orphans


def open_state(config: StoreConfig, backend: Backend) -> OpenState:
    """Open the index and segments under `config.data_dir`, recovering from a crash."""
    data_dir = config.data_dir
    seg_dir = segment_dir(data_dir)
    os.makedirs(seg_dir, exist_ok=True)
    stored_ids = _backend_segment_ids(backend)
    if _index_missing(data_dir) and (stored_ids or list_local_segments(seg_dir)):
        # The index is derived data; segments without one mean it was lost (a deleted
        # or replaced directory). Starting empty would hide every object and, worse,
        # reuse segment ids whose blobs hold them. Rebuild it from the segments first.
        log.warning("index missing under %s but segments exist: rebuilding it from the "
                    "segments", data_dir)
        report = rebuild_index(data_dir, backend)
        log.warning("index rebuilt: %d objects from %d segments", report.objects,
                    report.segments)
    kv = ix.RocksKV(index_dir(data_dir), cache_bytes=config.index_cache_bytes)
    index = ix.Index(kv)
    rows = index.segments()
    buckets = {b.name: b.row for b in index.buckets()}
    applier = Applier(index, buckets, rows)
    local_ids = list_local_segments(seg_dir)
    # Never reuse an id a segment anywhere already has: a new segment would replace
    # that blob in the backend.
    applier.next_segment_id = max(applier.next_segment_id, max(local_ids, default=0) + 1,
                                  max(stored_ids, default=0) + 1)
    state = OpenState(kv, index, applier, None, [], {}, 0)

    for segment_id in local_ids:
        path = local_segment_path(seg_dir, segment_id)
        if os.path.getsize(path) < fmt.SEGMENT_HEADER_BYTES:
            # Created, killed before its header was written (ActiveSegment creates the
            # file, then writes the header): no record in it was ever acknowledged.
            # Kept, it would fail every replay and rebuild, and open would never finish.
            log.warning("segment %x: no header (%d bytes), removed", segment_id,
                        os.path.getsize(path))
            os.unlink(path)
            continue
        row = rows.get(segment_id)
        if row is None:  # created, crashed before its row was written
            row = fmt.SegmentRow(segment_id, fmt.SEGMENT_ACTIVE)
            rows[segment_id] = row
        if row.state in (fmt.SEGMENT_COMPACTING, fmt.SEGMENT_DEAD) or (
                row.state == fmt.SEGMENT_SEALED and row.flags & fmt.SEGMENT_UPLOADED):
            os.unlink(path)  # unfinished compaction output, or an uploaded local copy
            continue
        if not _replay(state, path, row):
            kv.close()
            rebuild_index(data_dir, backend)
            state = open_state(config, backend)
            state.rebuilt = True
            return state

    for segment_id, row in sorted(rows.items()):
        if row.state == fmt.SEGMENT_ACTIVE and segment_id not in state.local:
            _resolve_missing_active(state, backend, row)
        elif row.state in (fmt.SEGMENT_COMPACTING, fmt.SEGMENT_DEAD):
            state.dead_blobs.append(fmt.segment_blob_name(segment_id))
            del rows[segment_id]
            kv.write([(ix.segment_key(segment_id), None)], sync=True)

    _choose_active(state, config.limits.segment_bytes_max)
    state.seq = max([r.max_seq for r in rows.values() if r.max_seq], default=0)
    state.seq = max(state.seq, index.get_meta_int("seq", 0))
    return state


def _index_missing(data_dir: str) -> bool:
    """No index at all: no such path, or an empty directory. Anything else that does
    not open (a file in its place, a damaged database) is refused by RocksKV with a
    clear error, never replaced silently."""
    path = index_dir(data_dir)
    return not os.path.lexists(path) or (os.path.isdir(path) and not os.listdir(path))


def _backend_segment_ids(backend: Backend) -> list[int]:
    ids = []
    for name in backend.list("segments/"):
        segment_id = fmt.segment_id_from_blob_name(name)
        if segment_id is not None:
            ids.append(segment_id)
    return ids


def _replay(state: OpenState, path: str, row: fmt.SegmentRow) -> bool:
    """Replay an unsealed local segment's tail. False if the index is ahead of the
    file (it must then be rebuilt)."""
    size = os.path.getsize(path)
    sealed = False
    try:
        with open(path, "rb") as handle:
            fmt.decode_trailer(os.pread(handle.fileno(), fmt.TRAILER_BYTES,
                                        max(0, size - fmt.TRAILER_BYTES)))
        sealed = True
    except CorruptionError:
        pass
    if row.indexed_bytes > size:
        log.error("segment %x is shorter (%d) than the index's watermark (%d): rebuilding",
                  row.segment_id, size, row.indexed_bytes)
        return False
    header, result = scan_file(path, row.indexed_bytes, sealed=sealed)
    if header.segment_id != row.segment_id:
        raise fmt.CorruptSegment(f"{path} holds segment {header.segment_id:x}")
    entries = footer_entries(row.segment_id, result.records)
    applier = state.applier
    applier.segments[row.segment_id] = replace(row, state=fmt.SEGMENT_ACTIVE,
                                               indexed_bytes=max(result.valid_end,
                                                                 row.indexed_bytes))
    state.orphan_records += _apply_chunks(applier, state.kv, entries)
    state.replayed_records += len(entries)
    end = size
    if not sealed and result.valid_end < size:
        state.cut_bytes += size - result.valid_end
        log.warning("segment %x: torn tail of %d bytes cut", row.segment_id,
                    size - result.valid_end)
        with open(path, "rb+") as handle:
            handle.truncate(result.valid_end)
            os.fsync(handle.fileno())
        end = result.valid_end
    segment = ActiveSegment(path, row.segment_id)
    state.local[row.segment_id] = segment
    row = state.applier.segments[row.segment_id]
    state.kv.write([ix.segment_op(replace(row, indexed_bytes=end if not sealed
                                           else row.indexed_bytes))], sync=True)
    if sealed:
        state.rolled.append(segment)
    return True


def _resolve_missing_active(state: OpenState, backend: Backend, row: fmt.SegmentRow) -> None:
    """An active row without a local file: it was sealed and uploaded before the crash
    recorded it (finish that), or the local disk was lost (its data is gone)."""
    name = fmt.segment_blob_name(row.segment_id)
    try:
        size = backend.size(name)
    except BlobNotFound:
        log.error("segment %x: active in the index but on no disk or backend; its "
                  "unsealed writes are lost (run fsck --rebuild-index)", row.segment_id)
        del state.applier.segments[row.segment_id]
        state.kv.write([(ix.segment_key(row.segment_id), None)], sync=True)
        return
    sealed = replace(row, state=fmt.SEGMENT_SEALED, flags=fmt.SEGMENT_UPLOADED,
                     indexed_bytes=size)
    state.applier.segments[row.segment_id] = sealed
    state.kv.write([ix.segment_op(sealed)], sync=True)


def _choose_active(state: OpenState, segment_bytes_max: int) -> None:
    """Keep appending to the newest unsealed segment if it has room; seal the others."""
    open_ids = sorted(i for i, s in state.local.items() if s not in state.rolled)
    for segment_id in open_ids[:-1]:
        state.rolled.append(state.local[segment_id])
    if open_ids:
        newest = state.local[open_ids[-1]]
        if newest.tail < segment_bytes_max // 2:
            state.active = newest
        else:
            state.rolled.append(newest)


# ----- rebuild ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RebuildReport:
    segments: int
    records: int
    objects: int
    buckets: int
    corrupt_segments: list[int]
    seconds: float


def _segment_sources(data_dir: str, backend: Backend) -> dict[int, tuple[str, str]]:
    """segment id -> ("local", path) or ("backend", blob name); local copies win."""
    sources: dict[int, tuple[str, str]] = {}
    for name in backend.list("segments/"):
        segment_id = fmt.segment_id_from_blob_name(name)
        if segment_id is not None:
            sources[segment_id] = ("backend", name)
    seg_dir = segment_dir(data_dir)
    if os.path.isdir(seg_dir):
        for segment_id in list_local_segments(seg_dir):
            sources[segment_id] = ("local", local_segment_path(seg_dir, segment_id))
    return sources


def _read_entries(source: tuple[str, str], segment_id: int, backend: Backend
                  ) -> tuple[list[fmt.FooterEntry], bool]:
    kind, where = source
    if kind == "backend":
        size = backend.size(where)
        entries = read_footer(lambda o, n: backend.get_range(where, o, n), size, segment_id)
        return entries, True
    try:
        header, result = scan_file(where, sealed=True)
        sealed = True
    except CorruptionError:
        header, result = scan_file(where)
        sealed = False
    if header.segment_id != segment_id:
        raise fmt.CorruptSegment(f"{where} holds segment {header.segment_id:x}")
    return footer_entries(segment_id, result.records), sealed


def rebuild_index(data_dir: str, backend: Backend) -> RebuildReport:
    """Replace the index under `data_dir` with one built from segments alone (local
    segment files and the backend's sealed segments). The old index is moved aside to
    ``index.old`` and removed once the new one is complete."""
    started = time.monotonic()
    path = index_dir(data_dir)
    old = path + ".old"
    if os.path.exists(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    kv = ix.RocksKV(path)
    index = ix.Index(kv)
    rows: dict[int, fmt.SegmentRow] = {}
    applier = Applier(index, {}, rows)
    sources = _segment_sources(data_dir, backend)
    corrupt: list[int] = []
    per_segment: dict[int, list[fmt.FooterEntry]] = {}
    bucket_entries: list[fmt.FooterEntry] = []
    for segment_id, source in sorted(sources.items()):
        try:
            entries, sealed = _read_entries(source, segment_id, backend)
        except CorruptionError as exc:
            log.error("segment %x unreadable, skipped: %s", segment_id, exc)
            corrupt.append(segment_id)
            continue
        uploaded = source[0] == "backend"
        state = fmt.SEGMENT_SEALED if sealed and uploaded else fmt.SEGMENT_ACTIVE
        size = backend.size(source[1]) if uploaded else os.path.getsize(source[1])
        rows[segment_id] = fmt.SegmentRow(
            segment_id, state, fmt.SEGMENT_UPLOADED if uploaded else 0, size)
        per_segment[segment_id] = entries
        bucket_entries.extend(e for e in entries if e.entry.flags & fmt.FLAG_BUCKET)
    bucket_entries.sort(key=lambda e: e.entry.seq)
    _apply_chunks(applier, kv, bucket_entries)
    records = len(bucket_entries)
    # Objects in seq order across all segments, not segment by segment: a compaction
    # output gets a higher id than the active segment, so a delete made after the
    # compaction sits in a lower-numbered segment than the put copy it deletes. A
    # tombstone leaves no index entry to compare with, so applying that older put after
    # it would bring the key back. (Ties, a record and its copy, keep segment order.)
    objects = [e for segment_id in sorted(per_segment) for e in per_segment[segment_id]
               if not e.entry.flags & fmt.FLAG_BUCKET]
    per_segment.clear()
    objects.sort(key=lambda e: e.entry.seq)
    _apply_chunks(applier, kv, objects)
    records += len(objects)
    applied = applier.apply([])
    seq = max([r.max_seq for r in rows.values() if r.max_seq], default=0)
    kv.write([*applied.ops, *(ix.segment_op(r) for r in rows.values()),
              ix.meta_int_op("seq", seq)], sync=True)
    report = RebuildReport(len(rows), records, applier.object_count, len(applier.buckets),
                           corrupt, time.monotonic() - started)
    kv.close()
    shutil.rmtree(old, ignore_errors=True)
    log.info("index rebuilt: %s", report)
    return report
