"""Recovery time per GiB of unsealed data.

Method (the "watermark reset"): write `tail_bytes` of 10 KiB objects into one active
segment (durability `none`; `segment_bytes_max` 3 GiB, so 1 GiB stays below the half
at which open would roll the segment instead of keeping it active), close cleanly, then
make the index forget the tail the way a crash before any index update would: delete
every object row, reset the segment row (`indexed_bytes` back to the header, live/dead
bytes and seqs cleared) and the object count, and compact the index so no tombstones
remain. `Store.open` must then scan, verify and re-index the whole tail. It is timed
with the tail warm in the page cache, and cold (the segment file's pages dropped with
posix_fadvise(DONTNEED) after an fsync; other files stay cached). A SIGKILL of the
writer would not do this: acknowledged writes are already in the index (the commit
applies them before it wakes the writer), so open would replay one commit group at most.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass

from bench.machine import reset_peak_rss, rss_bytes
from bench.workload import BUCKET, object_key, payload_pool
from petrel import format as fmt
from petrel import index as ix
from petrel.errors import PetrelError
from petrel.limits import GiB, Limits
from petrel.model import PutItem
from petrel.recovery import index_dir, segment_dir
from petrel.segments import local_segment_path
from petrel.settings import Durability, StoreConfig
from petrel.store import Store

OBJECT_BYTES = 10 * 1024
SEGMENT_BYTES_MAX = 3 * GiB
_WRITE_BATCH_ITEMS = 100
_DELETE_CHUNK = 10_000
METHOD = (
    "watermark reset: clean close, then object rows deleted and the segment row's "
    "indexed_bytes reset to the header, index compacted; Store.open replays the "
    "whole tail"
)


@dataclass(frozen=True, slots=True)
class OpenTiming:
    seconds: float
    replayed_records: int
    rss_before_bytes: int
    rss_peak_bytes: int  # VmHWM during the open (reset just before it)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    method: str
    object_bytes: int
    records: int
    tail_bytes: int
    write_seconds: float
    clean_open: OpenTiming  # nothing to replay: the fixed cost of opening
    warm: OpenTiming
    cold: OpenTiming

    def seconds_per_gib(self, timing: OpenTiming) -> float:
        return timing.seconds * GiB / self.tail_bytes


def config(data_dir: str) -> StoreConfig:
    return StoreConfig(
        data_dir,
        durability=Durability.NONE,
        compaction_enabled=False,
        limits=Limits(segment_bytes_max=SEGMENT_BYTES_MAX),
    )


def measure(data_dir: str, tail_bytes: int) -> ReplayResult:
    return asyncio.run(_measure(data_dir, tail_bytes))


async def _measure(data_dir: str, tail_bytes: int) -> ReplayResult:
    shutil.rmtree(data_dir, ignore_errors=True)
    records, written, write_seconds = await write_tail(data_dir, tail_bytes)
    clean = await timed_open(data_dir)
    segment = forget_tail(data_dir)
    warm = await timed_open(data_dir)
    forget_tail(data_dir)
    evict(segment)
    cold = await timed_open(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    for timing in (warm, cold):
        if timing.replayed_records < records:
            raise AssertionError(f"open replayed {timing.replayed_records} of {records}")
    return ReplayResult(METHOD, OBJECT_BYTES, records, written, write_seconds, clean, warm, cold)


async def write_tail(data_dir: str, tail_bytes: int) -> tuple[int, int, float]:
    """Objects enough to fill `tail_bytes` of segment; (records, bytes, seconds)."""
    record_bytes = fmt.record_length(len(f"{BUCKET}/{object_key(0)}"), 0, OBJECT_BYTES)
    count = -(-tail_bytes // record_bytes)
    pool = payload_pool(OBJECT_BYTES, seed=7)
    store = await Store.open(config(data_dir))
    try:
        await store.create_bucket(BUCKET)
        started = time.perf_counter()
        for first in range(0, count, _WRITE_BATCH_ITEMS):
            items = [
                PutItem(BUCKET, object_key(i), pool[i % len(pool)])
                for i in range(first, min(first + _WRITE_BATCH_ITEMS, count))
            ]
            failed = [r for r in await store.put_objects(items) if isinstance(r, PetrelError)]
            if failed:
                raise failed[0]
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    return count, count * record_bytes, seconds


async def timed_open(data_dir: str) -> OpenTiming:
    before = rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    store = await Store.open(config(data_dir))
    seconds = time.perf_counter() - started
    peak = rss_bytes("VmHWM")
    try:
        return OpenTiming(seconds, store.open_report.replayed_records, before, peak)
    finally:
        await store.close()


def forget_tail(data_dir: str) -> str:
    """Make the index forget everything in the (single) active segment; its path."""
    kv = ix.RocksKV(index_dir(data_dir))
    try:
        rows = [r for r in ix.Index(kv).segments().values() if r.state == fmt.SEGMENT_ACTIVE]
        if len(rows) != 1:
            raise AssertionError(f"expected one active segment, found {len(rows)}")
        row = rows[0]
        stale = [key for key, _ in kv.scan(ix.TAG_OBJECT, ix.prefix_stop(ix.TAG_OBJECT))]
        for first in range(0, len(stale), _DELETE_CHUNK):
            kv.write([(key, None) for key in stale[first : first + _DELETE_CHUNK]])
        reset = fmt.SegmentRow(row.segment_id, fmt.SEGMENT_ACTIVE, created_ms=row.created_ms)
        kv.write([ix.segment_op(reset), ix.meta_int_op("object_count", 0)], sync=True)
        kv.flush()
        kv.compact()
    finally:
        kv.close()
    return local_segment_path(segment_dir(data_dir), row.segment_id)


def evict(path: str) -> None:
    """Drop one file's pages from the page cache (after writing back dirty ones)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
