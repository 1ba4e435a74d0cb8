"""Compaction: rewrite a sealed segment whose dead fraction passed a threshold.

Steps for a victim segment V, each safe to crash after:

1. A new output segment O is registered as *compacting* (synced). A crash from here to
   step 3 leaves O marked, and opening the store deletes it.
2. V's live records (those the index still points at), tombstones that may still hide
   an older record, and its live bucket records are copied to O in offset order,
   verified on the way, rate-limited. O is sealed and uploaded.
3. O is recorded as sealed, all its bytes counted dead (synced).
4. The switch, in chunks, each on the event loop with no await between the check and the
   write: an index entry moves to O only if it still points at its old place in V
   (compare-and-set), so a concurrent overwrite or delete is never undone. Live bytes
   move from V to O in the same batch.
5. V is marked dead (synced) and its blob deleted after a grace period, so a reader that
   looked up an old location just before the switch still finds it.

A tombstone of seq t is dropped only when no other segment holds a record older than t
(its min_seq), so no older version of that key can come back in a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from petrel import format as fmt
from petrel import index as ix
from petrel.apply import split_object_key
from petrel.batchread import _Want, plan_runs
from petrel.commit import now_ms
from petrel.errors import CorruptionError
from petrel.segments import local_segment_path, read_footer

if TYPE_CHECKING:
    from petrel.store import Store

log = logging.getLogger("petrel.compaction")

_SWITCH_CHUNK = 1000
_READ_RUN_BYTES_MAX = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CompactionReport:
    victim: int
    output: int | None
    records_copied: int
    records_switched: int
    bytes_reclaimed: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _Copy:
    key: bytes
    old: fmt.Entry
    new: fmt.Entry


class Compactor:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = store.config
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.reports: list[CompactionReport] = []
        self.failed: set[int] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.compaction_interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("compaction round failed")

    def candidates(self, dead_fraction: float | None = None) -> list[int]:
        threshold = self.config.compaction_dead_fraction if dead_fraction is None \
            else dead_fraction
        rows = self.store.applier.segments.values()
        chosen = [r for r in rows if r.state == fmt.SEGMENT_SEALED and r.dead_bytes > 0
                  and r.dead_fraction >= threshold and r.segment_id not in self.failed]
        return [r.segment_id for r in sorted(chosen, key=lambda r: -r.dead_fraction)]

    async def run_once(self, dead_fraction: float | None = None,
                       bytes_per_s: int | None = None) -> list[CompactionReport]:
        """Compact every candidate now (`dead_fraction` and `bytes_per_s` override the
        configured threshold and copy rate for this round: `petrel compact`)."""
        reports = []
        for segment_id in self.candidates(dead_fraction):
            async with self._lock:
                # Another round (the background loop, an explicit call) may have
                # compacted it since the candidates were picked.
                row = self.store.applier.segments.get(segment_id)
                if row is None or row.state != fmt.SEGMENT_SEALED:
                    continue
                try:
                    reports.append(await self._compact(segment_id, bytes_per_s))
                except Exception:
                    # Left as it is (still readable); retried after a restart, when
                    # `petrel fsck` may have been run on it.
                    self.failed.add(segment_id)
                    raise
        return reports

    async def compact_segment(self, victim: int) -> CompactionReport:
        async with self._lock:
            return await self._compact(victim)

    # ----- one segment -------------------------------------------------------------
    async def _compact(self, victim: int, bytes_per_s: int | None = None
                       ) -> CompactionReport:
        started = time.monotonic()
        store = self.store
        loop = asyncio.get_running_loop()
        row = store.applier.segments[victim]
        if row.state != fmt.SEGMENT_SEALED:
            raise ValueError(f"segment {victim:x} is not sealed")
        name = fmt.segment_blob_name(victim)
        size = await loop.run_in_executor(store.io_pool, store.backend.size, name)
        footer = await loop.run_in_executor(
            store.io_pool, read_footer,
            lambda o, n: store.backend.get_range(name, o, n), size, victim)
        keep = self._select(victim, footer)
        if not keep:
            self._retire(victim, None, [])
            return CompactionReport(victim, None, 0, 0, row.live_bytes + row.dead_bytes,
                                    time.monotonic() - started)
        output = store.applier.allocate_segment_id()
        out_row = fmt.SegmentRow(output, fmt.SEGMENT_COMPACTING, created_ms=now_ms())
        store.applier.segments[output] = out_row
        store.kv.write([ix.segment_op(out_row), *store.applier.apply([]).ops], sync=True)
        path = local_segment_path(os.path.join(self.config.data_dir, "segments"), output)
        try:
            copies = await self._copy(victim, output, path, keep, bytes_per_s)
            sealed = await store.committer.sealer.seal(path)  # the seal process
            await loop.run_in_executor(store.io_pool, store.committer.upload,
                                       fmt.segment_blob_name(output), path, sealed.size_bytes)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._abandon(output)
            raise
        os.unlink(path)
        total = sum(c.new.location.length for c in copies)
        out_row = replace(out_row, state=fmt.SEGMENT_SEALED, flags=fmt.SEGMENT_UPLOADED,
                          indexed_bytes=sealed.size_bytes, live_bytes=0, dead_bytes=total,
                          min_seq=min((c.new.seq for c in copies
                                       if not c.new.flags & fmt.FLAG_BUCKET),
                                      default=fmt.SEQ_NONE),
                          max_seq=max(c.new.seq for c in copies))
        store.applier.segments[output] = out_row
        store.kv.write([ix.segment_op(out_row)], sync=True)
        switched = await self._switch(victim, output, copies)
        self._retire(victim, output, copies)
        report = CompactionReport(victim, output, len(copies), switched,
                                  row.live_bytes + row.dead_bytes - total,
                                  time.monotonic() - started)
        self.reports.append(report)
        log.info("compacted: %s", report)
        return report

    def _abandon(self, output: int) -> None:
        """Forget a compaction output that never switched (its blob too, if uploaded)."""
        store = self.store
        store.applier.segments.pop(output, None)
        store.kv.write([(ix.segment_key(output), None)], sync=True)
        store._delete_blobs_later([fmt.segment_blob_name(output)])

    def _select(self, victim: int, footer: list[fmt.FooterEntry]) -> list[fmt.FooterEntry]:
        """The victim's records that must survive it."""
        applier = self.store.applier
        others_min_seq = min((r.min_seq for i, r in applier.segments.items() if i != victim),
                             default=fmt.SEQ_NONE)
        keep: list[fmt.FooterEntry] = []
        objects: list[tuple[fmt.FooterEntry, bytes]] = []
        for item in footer:
            entry = item.entry
            if entry.flags & fmt.FLAG_TOMBSTONE:
                # Bucket tombstones are tiny and rare: always kept. An object tombstone
                # is kept while another segment may hold an older object record.
                if entry.flags & fmt.FLAG_BUCKET or others_min_seq < entry.seq:
                    keep.append(item)
            elif entry.flags & fmt.FLAG_BUCKET:
                bucket = applier.buckets.get(item.key.decode())
                if bucket is not None and bucket.seq == entry.seq:
                    keep.append(item)
            else:
                bucket_name, object_key = split_object_key(item.key)
                bucket = applier.buckets.get(bucket_name)
                if bucket is not None:
                    objects.append((item, ix.object_key(bucket.bucket_id, object_key)))
        for start in range(0, len(objects), _SWITCH_CHUNK):
            chunk = objects[start : start + _SWITCH_CHUNK]
            values = self.store.kv.multi_get([k for _, k in chunk])
            for (item, _), value in zip(chunk, values, strict=True):
                if value is not None and \
                        fmt.decode_index_value(value).location == item.entry.location:
                    keep.append(item)
        keep.sort(key=lambda e: e.entry.location.offset)
        return keep

    async def _copy(self, victim: int, output: int, path: str,
                    keep: list[fmt.FooterEntry], bytes_per_s: int | None = None
                    ) -> list[_Copy]:
        store = self.store
        rate = bytes_per_s or self.config.compaction_bytes_per_s
        loop = asyncio.get_running_loop()
        name = fmt.segment_blob_name(victim)
        wants = [_Want(i, item.entry, item.key) for i, item in enumerate(keep)]
        runs = plan_runs(wants, 1024 * 1024, _READ_RUN_BYTES_MAX)
        runs.sort(key=lambda r: r.start)
        header = fmt.encode_segment_header(fmt.SegmentHeader(output, now_ms()))
        copies: list[_Copy] = []
        budget_started, copied = time.monotonic(), 0
        with open(path, "xb") as handle:
            handle.write(header)
            offset = len(header)
            for run in runs:
                data = await loop.run_in_executor(store.io_pool, store.backend.get_range,
                                                  name, run.start, run.end - run.start)
                for want in run.wants:
                    old = want.entry
                    record = fmt.decode_record(data, old.location.offset - run.start)
                    if record.checksum != old.location.checksum:
                        raise CorruptionError(f"segment {victim:x}: record at "
                                              f"{old.location.offset} changed")
                    raw = data[old.location.offset - run.start:][: old.location.length]
                    await loop.run_in_executor(store.io_pool, handle.write, raw)
                    new = old._replace(location=fmt.Location(
                        output, offset, old.location.length, old.location.checksum))
                    copies.append(_Copy(keep[want.position].key, old, new))
                    offset += old.location.length
                copied += run.end - run.start
                # Rate limit: never copy faster than `rate` on average.
                ahead = copied / rate - (
                    time.monotonic() - budget_started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            handle.flush()
            os.fsync(handle.fileno())
        return copies

    async def _switch(self, victim: int, output: int, copies: list[_Copy]) -> int:
        """Compare-and-set each copied object's index entry from V to O, in chunks.
        Bucket and tombstone copies need no switch; they count live in O."""
        store = self.store
        applier = store.applier
        switched = 0
        for start in range(0, len(copies), _SWITCH_CHUNK):
            chunk = copies[start : start + _SWITCH_CHUNK]
            ops: list[ix.Op] = []
            moved = 0
            targets: list[tuple[_Copy, bytes]] = []
            for copy in chunk:
                flags = copy.old.flags
                if flags & (fmt.FLAG_TOMBSTONE | fmt.FLAG_BUCKET):
                    moved += copy.old.location.length
                    continue
                bucket_name, object_key = split_object_key(copy.key)
                bucket = applier.buckets.get(bucket_name)
                if bucket is not None:
                    targets.append((copy, ix.object_key(bucket.bucket_id, object_key)))
            # From here to the write there is no await: no commit can interleave.
            values = store.kv.multi_get([k for _, k in targets])
            for (copy, key), value in zip(targets, values, strict=True):
                if value is None or fmt.decode_index_value(value).location != copy.old.location:
                    continue  # overwritten or deleted meanwhile: the copy stays dead
                ops.append((key, fmt.encode_index_value(copy.new)))
                moved += copy.old.location.length
                switched += 1
            out_row = applier.segments[output]
            applier.segments[output] = replace(out_row, live_bytes=out_row.live_bytes + moved,
                                               dead_bytes=out_row.dead_bytes - moved)
            ops.append(ix.segment_op(applier.segments[output]))
            victim_row = applier.segments.get(victim)
            if victim_row is not None:
                applier.segments[victim] = replace(
                    victim_row, live_bytes=max(0, victim_row.live_bytes - moved),
                    dead_bytes=victim_row.dead_bytes + moved)
                ops.append(ix.segment_op(applier.segments[victim]))
            store.kv.write(ops)
            await asyncio.sleep(0)  # let readers and commits run between chunks
        return switched

    def _retire(self, victim: int, output: int | None, copies: list[_Copy]) -> None:
        """Mark V dead (synced), then delete its blob and row after the grace period."""
        store = self.store
        row = store.applier.segments.get(victim)
        if row is None:
            return
        dead = replace(row, state=fmt.SEGMENT_DEAD)
        store.applier.segments[victim] = dead
        store.kv.write([ix.segment_op(dead)], sync=True)
        grace = self.config.compaction_delete_grace_s
        loop = asyncio.get_running_loop()
        loop.call_later(grace, self._delete_victim, victim)

    def _delete_victim(self, victim: int) -> None:
        store = self.store
        if store._closed:
            return  # reopening finds the dead row and finishes the deletion
        store.forget_segment(victim)
        store._delete_blobs_later([fmt.segment_blob_name(victim)])
        store.applier.segments.pop(victim, None)
        store.kv.write([(ix.segment_key(victim), None)], sync=True)
