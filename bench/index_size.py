"""Index bytes per object on disk, and process RSS, at a large object count (1M).

Small objects (distinct 100-byte payloads, so every index value carries a distinct
MD5 and checksum, as in real data) are inserted with `put_objects`, durability `none`;
then RocksDB is flushed and fully compacted and its SST bytes counted. Meant to run in
a fresh process (`workload.in_fresh_process`), so RSS is the engine's alone.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from dataclasses import dataclass

from bench.machine import rss_bytes
from bench.workload import BUCKET, object_key
from petrel import index as ix
from petrel.errors import PetrelError
from petrel.model import PutItem
from petrel.recovery import index_dir
from petrel.settings import Durability, StoreConfig
from petrel.store import Store

PAYLOAD_BYTES = 100
BATCH_ITEMS = 1000  # the engine's batch_items_max
INSERT_TASKS = 2  # batches in flight: one encoding while the other commits


@dataclass(frozen=True, slots=True)
class IndexResult:
    objects: int
    payload_bytes: int
    key_bytes_avg: float  # the S3 object key, e.g. shard-0001/img-00001234.jpg
    index_key_bytes_avg: float  # as RocksDB stores it: tag + bucket id + object key
    index_value_bytes: int  # one uncompressed index value (no user metadata)
    insert_seconds: float
    flush_compact_seconds: float
    sst_bytes: int
    index_dir_bytes: int  # SSTs plus WAL, MANIFEST, LOG, OPTIONS
    rss_baseline_bytes: int  # interpreter + petrel imported, before the store opens
    rss_loaded_bytes: int  # store open, all objects inserted
    rss_compacted_bytes: int  # after flush + compaction
    rss_peak_bytes: int

    @property
    def sst_bytes_per_object(self) -> float:
        return self.sst_bytes / self.objects

    @property
    def bytes_beyond_key(self) -> float:
        return self.sst_bytes_per_object - self.key_bytes_avg

    @property
    def rss_per_million_bytes(self) -> float:
        return (self.rss_loaded_bytes - self.rss_baseline_bytes) * 1e6 / self.objects


def measure(data_dir: str, objects: int) -> IndexResult:
    return asyncio.run(_measure(data_dir, objects))


async def _measure(data_dir: str, objects: int) -> IndexResult:
    shutil.rmtree(data_dir, ignore_errors=True)
    baseline = rss_bytes()
    store = await Store.open(
        StoreConfig(data_dir, durability=Durability.NONE, compaction_enabled=False)
    )
    try:
        await store.create_bucket(BUCKET)
        started = time.perf_counter()
        await _insert(store, objects)
        insert_seconds = time.perf_counter() - started
        if store.stats().objects != objects:
            raise AssertionError(f"{store.stats().objects} objects indexed, not {objects}")
        loaded = rss_bytes()
        started = time.perf_counter()
        store.kv.flush()
        store.kv.compact()
        flush_compact_seconds = time.perf_counter() - started
        bucket_id = store.applier.buckets[BUCKET].bucket_id
        value = store.kv.get(ix.object_key(bucket_id, object_key(0).encode()))
        assert value is not None
        sst_bytes = store.kv.disk_bytes()
        compacted = rss_bytes()
        peak = rss_bytes("VmHWM")
    finally:
        await store.close()
    key_bytes = sum(len(object_key(i)) for i in range(objects)) / objects
    result = IndexResult(
        objects,
        PAYLOAD_BYTES,
        key_bytes,
        key_bytes + len(ix.object_prefix(bucket_id)),
        len(value),
        insert_seconds,
        flush_compact_seconds,
        sst_bytes,
        _tree_bytes(index_dir(data_dir)),
        baseline,
        loaded,
        compacted,
        peak,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


async def _insert(store: Store, objects: int) -> None:
    shared = iter(range(0, objects, BATCH_ITEMS))

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for first in shared:
            count = min(BATCH_ITEMS, objects - first)
            blob = rng.randbytes(count * PAYLOAD_BYTES)
            items = [
                PutItem(
                    BUCKET, object_key(first + n), blob[n * PAYLOAD_BYTES : (n + 1) * PAYLOAD_BYTES]
                )
                for n in range(count)
            ]
            failed = [r for r in await store.put_objects(items) if isinstance(r, PetrelError)]
            if failed:
                raise failed[0]

    await asyncio.gather(*(worker(seed) for seed in range(INSERT_TASKS)))


def _tree_bytes(path: str) -> int:
    total = 0
    for directory, _, names in os.walk(path):
        total += sum(os.path.getsize(os.path.join(directory, n)) for n in names)
    return total
