"""Reflecting records in the index: the one place that decides what a record does to
the index and to per-segment live/dead accounting.

Used on three paths that must agree: a group commit (live writes), replay of segment
tails on open, and a full rebuild from segments. Rules:

* Records are ordered by `seq`. An object record takes effect only if it is newer than
  what the index holds for its key; a copy made by compaction keeps its seq, so it never
  overrides a newer write.
* An object record belongs to the incarnation of its bucket created before it: a record
  older than its bucket's creation record (a bucket deleted and made again) is dead.
* Bytes of a record the index points at are *live* in its segment; when the key is
  overwritten or deleted they become *dead*. Tombstones and bucket records count as
  live: compaction keeps them as long as an older record could still need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from petrel import format as fmt
from petrel import index as ix
from petrel.errors import BucketAlreadyOwnedByYou, NoSuchBucket, PetrelError


@dataclass(slots=True)
class Applied:
    """The outcome of applying a batch: index ops to write, and per item an error
    (None when it took effect), plus the pointer records of large objects that lost
    their last reference (key, location): their blobs can be deleted."""

    ops: list[ix.Op] = field(default_factory=list)
    errors: list[PetrelError | None] = field(default_factory=list)
    orphan_records: list[tuple[bytes, fmt.Location]] = field(default_factory=list)


def split_object_key(key: bytes) -> tuple[str, bytes]:
    bucket, _, object_key = key.partition(b"/")
    return bucket.decode(), object_key


class Applier:
    """Applies records to an index, tracking bucket rows and segment rows in memory.

    Not thread-safe: one applier, used from one thread (the event loop).
    """

    def __init__(self, index: ix.Index, buckets: dict[str, fmt.BucketRow],
                 segments: dict[int, fmt.SegmentRow]) -> None:
        self.index = index
        self.buckets = buckets
        self.segments = segments
        self.next_bucket_id = index.get_meta_int("next_bucket_id", 1)
        self.object_count = index.get_meta_int("object_count", 0)
        self.next_segment_id = max(index.get_meta_int("next_segment_id", 1),
                                   max(segments, default=0) + 1)
        self._delta: dict[int, list[int]] = {}

    def allocate_segment_id(self, floor: int = 0) -> int:
        """A segment id never used before (ids are not reused: a blob deleted late must
        never be a newer segment). Persisted with the next applied batch."""
        segment_id = max(self.next_segment_id, floor)
        self.next_segment_id = segment_id + 1
        return segment_id

    def apply(self, items: Sequence[fmt.FooterEntry]) -> Applied:
        """Compute the effect of `items` (in seq order). Mutates the in-memory bucket
        and segment rows; the caller must write `Applied.ops` (which include the touched
        segment rows) in one atomic batch."""
        out = Applied()
        touched: set[int] = set()
        # Per-segment [live, dead, min_seq, max_seq] deltas, folded into the rows once at
        # the end (one row object per segment per batch, not two per record).
        self._delta = {}
        current = self._prefetch(items)
        for item in items:
            entry = item.entry
            touched.add(entry.location.segment_id)
            self._note_seq(entry)
            if entry.flags & fmt.FLAG_BUCKET:
                out.errors.append(self._apply_bucket(item, out))
            else:
                out.errors.append(self._apply_object(item, current, out, touched))
        self._fold()
        for segment_id in touched:
            if segment_id in self.segments:  # a retired entry's segment may be gone
                out.ops.append(ix.segment_op(self.segments[segment_id]))
        out.ops.append(ix.meta_int_op("next_bucket_id", self.next_bucket_id))
        out.ops.append(ix.meta_int_op("object_count", self.object_count))
        out.ops.append(ix.meta_int_op("next_segment_id", self.next_segment_id))
        return out

    # ----- helpers -----------------------------------------------------------------
    def _prefetch(self, items: Sequence[fmt.FooterEntry]) -> dict[bytes, fmt.Entry | None]:
        keys = []
        for item in items:
            if item.entry.flags & fmt.FLAG_BUCKET:
                continue
            bucket, object_key = split_object_key(item.key)
            row = self.buckets.get(bucket)
            if row is not None:
                keys.append(ix.object_key(row.bucket_id, object_key))
        values = self.index.kv.multi_get(keys)
        return {k: None if v is None else fmt.decode_index_value(v)
                for k, v in zip(keys, values, strict=True)}

    def _slot(self, segment_id: int) -> list[int] | None:
        slot = self._delta.get(segment_id)
        if slot is None:
            if segment_id not in self.segments:
                return None  # its segment was already deleted: nothing to account
            slot = self._delta[segment_id] = [0, 0, fmt.SEQ_NONE, 0]
        return slot

    def _note_seq(self, entry: fmt.Entry) -> None:
        """Track each segment's seq range. min_seq counts object records only: it tells
        compaction whether an older object record may still exist in the segment (a
        bucket record's low seq would keep every object tombstone forever)."""
        slot = self._slot(entry.location.segment_id)
        assert slot is not None, "a record's own segment must be registered"
        if not entry.flags & fmt.FLAG_BUCKET and entry.seq < slot[2]:
            slot[2] = entry.seq
        if entry.seq > slot[3]:
            slot[3] = entry.seq

    def _account(self, location: fmt.Location, *, live: int, dead: int) -> None:
        slot = self._slot(location.segment_id)
        if slot is not None:
            slot[0] += live
            slot[1] += dead

    def _fold(self) -> None:
        for segment_id, (live, dead, low, high) in self._delta.items():
            row = self.segments[segment_id]
            self.segments[segment_id] = replace(
                row, live_bytes=max(0, row.live_bytes + live), dead_bytes=row.dead_bytes + dead,
                min_seq=min(row.min_seq, low), max_seq=max(row.max_seq, high))
        self._delta = {}

    def _retire(self, key: bytes, old: fmt.Entry, out: Applied) -> None:
        self._account(old.location, live=-old.location.length, dead=old.location.length)
        if old.flags & fmt.FLAG_LARGE:
            out.orphan_records.append((key, old.location))

    def _apply_bucket(self, item: fmt.FooterEntry, out: Applied) -> PetrelError | None:
        entry, name = item.entry, item.key.decode()
        row = self.buckets.get(name)
        length = entry.location.length
        if entry.flags & fmt.FLAG_TOMBSTONE:
            if row is None or row.seq > entry.seq:
                self._account(entry.location, live=0, dead=length)
                return NoSuchBucket(resource=name)
            del self.buckets[name]
            out.ops.append(ix.bucket_op(name, None))
            self._account(entry.location, live=length, dead=0)
            return None
        if row is not None:
            self._account(entry.location, live=0, dead=length)
            return BucketAlreadyOwnedByYou(resource=name)
        row = fmt.BucketRow(self.next_bucket_id, entry.mtime_ms, entry.seq)
        self.next_bucket_id += 1
        self.buckets[name] = row
        out.ops.append(ix.bucket_op(name, row))
        self._account(entry.location, live=length, dead=0)
        return None

    def _apply_object(self, item: fmt.FooterEntry, current: dict[bytes, fmt.Entry | None],
                      out: Applied, touched: set[int]) -> PetrelError | None:
        entry = item.entry
        length = entry.location.length
        bucket, object_key = split_object_key(item.key)
        row = self.buckets.get(bucket)
        if row is None or row.seq > entry.seq:
            self._account(entry.location, live=0, dead=length)
            if entry.flags & fmt.FLAG_LARGE and not entry.flags & fmt.FLAG_TOMBSTONE:
                out.orphan_records.append((item.key, entry.location))
            return NoSuchBucket(resource=bucket)
        key = ix.object_key(row.bucket_id, object_key)
        old = current.get(key)
        if old is not None and old.seq >= entry.seq:
            if old.seq == entry.seq and old.location == entry.location:
                return None  # already reflected (replay is idempotent)
            self._account(entry.location, live=0, dead=length)  # stale: newer one wins
            if entry.flags & fmt.FLAG_LARGE and not entry.flags & fmt.FLAG_TOMBSTONE:
                out.orphan_records.append((item.key, entry.location))
            return None
        if old is not None:
            touched.add(old.location.segment_id)
            self._retire(item.key, old, out)
        if entry.flags & fmt.FLAG_TOMBSTONE:
            current[key] = None
            out.ops.append((key, None))
            self.object_count -= old is not None
            self._account(entry.location, live=length, dead=0)
            return None
        current[key] = entry
        out.ops.append((key, fmt.encode_index_value(entry)))
        self.object_count += old is None
        self._account(entry.location, live=length, dead=0)
        return None
