"""The engine over the S3 backend, against a real SeaweedFS: sealed segments uploaded and
read back with ranged GETs once their local copy is gone, batch gets merged into one GET
per run, compaction of remote segments, and the index rebuilt from the bucket alone."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from weed import backend_config

from petrel import format as fmt
from petrel.backends.cache import CachedBackend
from petrel.backends.s3 import S3Backend
from petrel.compaction import Compactor
from petrel.errors import NoSuchKey
from petrel.limits import KiB, Limits
from petrel.model import ByteRange, GetItem
from petrel.recovery import rebuild_index, segment_dir
from petrel.segments import list_local_segments
from petrel.settings import S3BackendConfig, StoreConfig
from petrel.store import Store
from petrel.testing.seaweedfs import SeaweedFS

BUCKET = "train"
LIMITS = Limits(segment_bytes_max=256 * KiB, pack_threshold_bytes=16 * KiB)


class CountingS3Backend(S3Backend):
    """The real S3 backend, counting ranged GETs (how many requests a read costs)."""

    def __init__(self, config: S3BackendConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.ranged_gets: list[tuple[str, int, int]] = []

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.ranged_gets.append((name, offset, length))
        return super().get_range(name, offset, length)


def store_config(data_dir: Path, s3: S3BackendConfig, **overrides: Any) -> StoreConfig:
    settings: dict[str, Any] = {"limits": LIMITS, "compaction_interval_s": 3600.0,
                                "compaction_delete_grace_s": 0.0, "backend": s3}
    settings.update(overrides)
    return StoreConfig(data_dir=str(data_dir), **settings)


def dataset(count: int, seed: int = 1) -> dict[str, bytes]:
    """Objects of 1..12 KiB, plus two large ones (stored whole in the backend)."""
    rng = random.Random(seed)
    objects = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(1 * KiB, 12 * KiB))
               for i in range(count)}
    objects["big/a.bin"] = rng.randbytes(40 * KiB)
    objects["big/b.bin"] = rng.randbytes(100 * KiB + 3)
    return objects


async def fill(store: Store, objects: dict[str, bytes]) -> None:
    if BUCKET not in {b.name for b in store.list_buckets()}:
        await store.create_bucket(BUCKET)
    for key, data in objects.items():
        await store.put_object(BUCKET, key, data)


async def assert_all(store: Store, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        got = await store.get_object(BUCKET, key)
        assert got.body == data, key


def sealed_segments(store: Store) -> set[int]:
    return {i for i, r in store.applier.segments.items() if r.state == fmt.SEGMENT_SEALED}


@pytest.fixture
def s3(weed: SeaweedFS) -> S3BackendConfig:
    return backend_config(weed)


@pytest.fixture
async def remote_store(tmp_path: Path, s3: S3BackendConfig
                       ) -> AsyncIterator[tuple[Store, dict[str, bytes]]]:
    """A store whose every segment is sealed, uploaded, and gone from local disk."""
    objects = dataset(120)
    config = store_config(tmp_path / "data", s3)
    async with await Store.open(config) as store:
        await fill(store, objects)
    # close() seals and uploads the active segment too.
    assert list_local_segments(segment_dir(config.data_dir)) == []
    store = await Store.open(config, CountingS3Backend(s3, threads=config.io_threads))
    try:
        yield store, objects
    finally:
        await store.close()


async def test_sealed_segments_are_uploaded_and_local_copies_dropped(
        tmp_path: Path, s3: S3BackendConfig) -> None:
    objects = dataset(120)
    config = store_config(tmp_path / "data", s3)
    async with await Store.open(config) as store:
        await fill(store, objects)
        await store.committer.wait_for_seals()
        sealed = sealed_segments(store)
        assert len(sealed) >= 3  # 120 objects of ~6.5 KiB in 256 KiB segments
        local = set(list_local_segments(segment_dir(config.data_dir)))
        assert local.isdisjoint(sealed)
        assert local == {store.committer.active.segment_id}  # type: ignore[union-attr]
        listed = set(store.backend.list("segments/"))
        assert listed == {fmt.segment_blob_name(i) for i in sealed}
        assert store.committer.upload_backlog_bytes() < LIMITS.segment_bytes_max
        await assert_all(store, objects)  # remote and local segments mixed


async def test_reads_come_from_the_backend(remote_store: tuple[Store, dict[str, bytes]]
                                           ) -> None:
    store, objects = remote_store
    backend = store.backend
    assert isinstance(backend, CountingS3Backend)
    assert store.committer.local == {}
    await assert_all(store, objects)
    # One ranged GET per object for exactly its record (a large object's record points
    # at its blob: one more GET, of objects/).
    segment_gets = [g for g in backend.ranged_gets if g[0].startswith("segments/")]
    assert len(segment_gets) == len(objects)
    assert all(length < 16 * KiB for _, _, length in segment_gets)
    blob_gets = [g for g in backend.ranged_gets if g[0].startswith("objects/")]
    assert sorted(length for _, _, length in blob_gets) == [40 * KiB, 100 * KiB + 3]
    ranged = await store.get_object(BUCKET, "img/00007.jpg", ByteRange(100, 100))
    assert ranged.body == objects["img/00007.jpg"][100:200]


async def test_batch_get_merges_neighbours_into_one_get_per_run(
        remote_store: tuple[Store, dict[str, bytes]]) -> None:
    store, objects = remote_store
    backend = store.backend
    assert isinstance(backend, CountingS3Backend)
    keys = sorted(k for k in objects if k.startswith("img/"))  # packed objects only
    random.Random(5).shuffle(keys)
    wanted = [*keys[:80], "img/missing.jpg"]
    results = await store.get_objects([GetItem(BUCKET, key) for key in wanted])
    assert [r.item.key for r in results] == wanted  # request order
    for result in results[:-1]:
        assert result.error is None, result.item.key
        assert result.data == objects[result.item.key]
    assert isinstance(results[-1].error, NoSuchKey)
    segment_gets = [g for g in backend.ranged_gets if g[0].startswith("segments/")]
    segments = {store.locate_object(BUCKET, k).entry.location.segment_id
                 for k in wanted[:-1]}
    # Records of one segment lie within the merge gap of each other: one GET each.
    assert len(segment_gets) == len(segments)
    assert len(segment_gets) < len(wanted) // 10


async def test_a_warm_cache_is_read_on_the_event_loop(
        remote_store: tuple[Store, dict[str, bytes]], s3: S3BackendConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Once the read cache holds a segment's blocks, reads of its records (single and
    # batch) come from the cache files on the loop: no worker thread, no backend GET.
    first, objects = remote_store
    config = first.config
    await first.close()
    counting = CountingS3Backend(s3, threads=config.io_threads)
    cached = CachedBackend(counting, os.path.join(config.data_dir, "cache"),
                           bytes_max=config.read_cache_bytes_max,
                           block_bytes=config.read_cache_block_bytes)
    async with await Store.open(config, cached) as store:
        keys = sorted(k for k in objects if k.startswith("img/"))
        await store.get_objects([GetItem(BUCKET, key) for key in keys])  # warms the cache
        if not cached._nowait.on:
            pytest.skip("the cache's filesystem refuses RWF_NOWAIT: warm reads use threads")
        handed: list[object] = []
        submit = store.io_pool.submit

        def counting_submit(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            handed.append(fn)
            return submit(fn, *args, **kwargs)

        monkeypatch.setattr(store.io_pool, "submit", counting_submit)
        gets, hits = len(counting.ranged_gets), cached.stats().hits
        results = await store.get_objects([GetItem(BUCKET, key) for key in reversed(keys)])
        assert [r.data for r in results] == [objects[k] for k in reversed(keys)]
        for key in keys[:10]:
            assert (await store.get_object(BUCKET, key)).body == objects[key]
        assert handed == [] and len(counting.ranged_gets) == gets
        assert cached.stats().hits > hits


async def test_compaction_of_remote_segments(remote_store: tuple[Store, dict[str, bytes]]
                                             ) -> None:
    store, objects = remote_store
    victim = store.locate_object(BUCKET, "img/00000.jpg").entry.location.segment_id
    in_victim = [k for k in objects
                 if store.locate_object(BUCKET, k).entry.location.segment_id == victim]
    deleted = in_victim[: len(in_victim) * 3 // 4]
    for key in deleted:
        await store.delete_object(BUCKET, key)
        del objects[key]
    compactor = store.compactor
    assert isinstance(compactor, Compactor)
    report = await compactor.compact_segment(victim)
    assert report.output is not None
    assert report.records_switched == len(in_victim) - len(deleted)
    await sleep_until(lambda: fmt.segment_blob_name(victim)
                              not in set(store.backend.list("segments/")))
    assert fmt.segment_blob_name(report.output) in set(store.backend.list("segments/"))
    # On local disk: only the active segment holding the tombstones, not the output.
    active = store.committer.active
    assert active is not None
    assert list_local_segments(segment_dir(store.config.data_dir)) == [active.segment_id]
    for key in in_victim[len(deleted):]:
        assert store.locate_object(BUCKET, key).entry.location.segment_id == report.output
    await assert_all(store, objects)
    for key in deleted:
        with pytest.raises(NoSuchKey):
            await store.get_object(BUCKET, key)


async def sleep_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_index_rebuilt_from_the_backend_alone(tmp_path: Path, s3: S3BackendConfig
                                                    ) -> None:
    """The local disk is lost after sealing (index, segments, everything): a new data
    directory rebuilt from the bucket serves every object byte for byte."""
    objects = dataset(150, seed=2)
    config = store_config(tmp_path / "data", s3)
    async with await Store.open(config) as store:
        await fill(store, objects)
        for key in list(objects)[:10]:  # deletes and overwrites must survive too
            await store.delete_object(BUCKET, key)
            del objects[key]
        objects["img/00020.jpg"] = b"overwritten"
        await store.put_object(BUCKET, "img/00020.jpg", objects["img/00020.jpg"])
    shutil.rmtree(config.data_dir)

    lost = tmp_path / "new-disk"
    os.makedirs(lost)
    backend = S3Backend(s3)
    try:
        report = rebuild_index(str(lost), backend)
    finally:
        backend.close()
    assert report.objects == len(objects)
    assert report.corrupt_segments == []
    async with await Store.open(store_config(lost, s3)) as store:
        listed = store.list_objects(BUCKET, max_keys=1000)
        assert sorted(o.key for o in listed.objects) == sorted(objects)
        await assert_all(store, objects)
        for key in ("img/00000.jpg", "img/00009.jpg"):
            with pytest.raises(NoSuchKey):
                await store.get_object(BUCKET, key)
        # New writes after the rebuild get fresh segment ids (no clobbering).
        await store.put_object(BUCKET, "after/rebuild", b"new")
        assert (await store.get_object(BUCKET, "after/rebuild")).body == b"new"
