"""Store API round trips: buckets, objects, ranges, copy, listing, batches, durability
modes, large objects, reopen."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from petrel import format as fmt
from petrel.errors import (
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    EntityTooLarge,
    InvalidBucketName,
    InvalidRange,
    KeyTooLongError,
    MetadataTooLarge,
    NoSuchBucket,
    NoSuchKey,
    TooManyItems,
)
from petrel.limits import KiB, Limits
from petrel.model import ByteRange, GetItem, PutItem
from petrel.settings import Durability, StoreConfig
from petrel.store import Store


# ----- buckets -----------------------------------------------------------------------
async def test_bucket_lifecycle(store: Store) -> None:
    assert store.list_buckets() == []
    created = await store.create_bucket("train")
    assert created.name == "train"
    assert [b.name for b in store.list_buckets()] == ["train"]
    with pytest.raises(BucketAlreadyOwnedByYou):
        await store.create_bucket("train")
    await store.put_object("train", "k", b"v")
    with pytest.raises(BucketNotEmpty):
        await store.delete_bucket("train")
    await store.delete_object("train", "k")
    await store.delete_bucket("train")
    assert store.list_buckets() == []
    with pytest.raises(NoSuchBucket):
        store.head_bucket("train")
    with pytest.raises(NoSuchBucket):
        await store.put_object("train", "k", b"v")


@pytest.mark.parametrize("name", ["ab", "A-bucket", "-abc", "abc-", "a..b", "192.168.1.1",
                                  "a" * 64, "a_b", "a.-b"])
async def test_invalid_bucket_names(store: Store, name: str) -> None:
    with pytest.raises(InvalidBucketName):
        await store.create_bucket(name)


async def test_recreated_bucket_does_not_resurrect_objects(store: Store) -> None:
    await store.create_bucket("bk1")
    await store.put_object("bk1", "old", b"1")
    await store.delete_object("bk1", "old")
    await store.delete_bucket("bk1")
    await store.create_bucket("bk1")
    with pytest.raises(NoSuchKey):
        await store.get_object("bk1", "old")
    assert store.list_objects("bk1").objects == []


# ----- objects -----------------------------------------------------------------------
async def test_put_get_head_delete(store: Store) -> None:
    await store.create_bucket("bkt")
    meta = fmt.ObjectMeta("image/jpeg", (("origin", "camera-1"), ("ünï", "cödé")))
    info = await store.put_object("bkt", "dir/é.jpg", b"payload", meta)
    assert info.etag == hashlib.md5(b"payload").hexdigest()
    assert info.size == 7
    head = store.head_object("bkt", "dir/é.jpg")
    assert (head.content_type, head.user_metadata) == ("image/jpeg", meta.user)
    assert head.etag == info.etag and head.last_modified_ms == info.last_modified_ms
    got = await store.get_object("bkt", "dir/é.jpg")
    assert got.body == b"payload" and got.info == head
    assert await store.delete_object("bkt", "dir/é.jpg") is True
    assert await store.delete_object("bkt", "dir/é.jpg") is False
    with pytest.raises(NoSuchKey):
        await store.get_object("bkt", "dir/é.jpg")
    with pytest.raises(NoSuchKey):
        store.head_object("bkt", "dir/é.jpg")


async def test_empty_object_and_overwrite(store: Store) -> None:
    await store.create_bucket("bkt")
    await store.put_object("bkt", "k", b"")
    assert (await store.get_object("bkt", "k")).body == b""
    await store.put_object("bkt", "k", b"second")
    assert (await store.get_object("bkt", "k")).body == b"second"
    assert store.stats().objects == 1


async def test_ranges(store: Store) -> None:
    await store.create_bucket("bkt")
    data = bytes(range(256)) * 4
    await store.put_object("bkt", "k", data)
    for start, length in [(0, 1), (10, 100), (1000, 24), (1000, None), (5, 5000)]:
        got = await store.get_object("bkt", "k", ByteRange(start, length))
        end = len(data) if length is None else start + length
        assert got.body == data[start:end] and got.start == start
    with pytest.raises(InvalidRange):
        await store.get_object("bkt", "k", ByteRange(len(data)))


async def test_key_and_metadata_limits(store: Store) -> None:
    await store.create_bucket("bkt")
    await store.put_object("bkt", "k" * 1024, b"max key")
    with pytest.raises(KeyTooLongError):
        await store.put_object("bkt", "k" * 1025, b"x")
    too_much = fmt.ObjectMeta(user=(("a", "v" * 2048),))
    with pytest.raises(MetadataTooLarge):
        await store.put_object("bkt", "k", b"x", too_much)
    assert store.list_objects("bkt").objects[0].key == "k" * 1024


async def test_entity_too_large(tmp_path) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(segment_bytes_max=256 * KiB, pack_threshold_bytes=16 * KiB,
                    object_bytes_max=64 * KiB)
    async with await Store.open(StoreConfig(str(tmp_path), limits=limits)) as store:
        await store.create_bucket("bkt")
        with pytest.raises(EntityTooLarge):
            await store.put_object("bkt", "k", bytes(64 * KiB + 1))

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield bytes(10 * KiB)

        with pytest.raises(EntityTooLarge):
            await store.put_object_stream("bkt", "k", chunks())
        with pytest.raises(NoSuchKey):
            store.head_object("bkt", "k")


async def test_large_objects_stored_whole_in_backend(store: Store) -> None:
    await store.create_bucket("bkt")
    data = os.urandom(100 * KiB)  # above the 16 KiB pack threshold
    info = await store.put_object("bkt", "big", data)
    assert info.large and info.etag == hashlib.md5(data).hexdigest()
    blobs = list(store.backend.list("objects/"))
    assert len(blobs) == 1
    assert (await store.get_object("bkt", "big")).body == data
    assert (await store.get_object("bkt", "big", ByteRange(50_000, 10))).body == data[50_000:50_010]
    stream = await store.open_object("bkt", "big", chunk_bytes=7 * KiB)
    assert b"".join([c async for c in stream.chunks]) == data
    await store.put_object("bkt", "big", b"small now")  # the old blob becomes garbage
    await store.flush()
    await asyncio.sleep(0.05)
    assert list(store.backend.list("objects/")) == []
    assert (await store.get_object("bkt", "big")).body == b"small now"


async def test_streamed_put_small_and_large(store: Store) -> None:
    await store.create_bucket("bkt")

    async def chunks(total: int):  # type: ignore[no-untyped-def]
        sent = 0
        while sent < total:
            piece = os.urandom(min(5000, total - sent))
            sent += len(piece)
            yield piece

    for size in (0, 1000, 16 * KiB, 16 * KiB + 1, 200 * KiB):
        collected: list[bytes] = []

        async def recorded(total: int = size, sink: list[bytes] = collected):  # type: ignore[no-untyped-def]
            async for piece in chunks(total):
                sink.append(piece)
                yield piece

        info = await store.put_object_stream("bkt", f"s{size}", recorded())
        data = b"".join(collected)
        assert info.size == size and info.etag == hashlib.md5(data).hexdigest()
        assert (await store.get_object("bkt", f"s{size}")).body == data


async def test_copy_object(store: Store) -> None:
    await store.create_bucket("bkt")
    await store.create_bucket("cpy")
    meta = fmt.ObjectMeta("text/plain", (("a", "1"),))
    src = await store.put_object("bkt", "src", b"content", meta)
    copied = await store.copy_object("bkt", "src", "cpy", "dst")
    assert copied.etag == src.etag and copied.content_type == "text/plain"
    assert copied.user_metadata == (("a", "1"),)
    replaced = await store.copy_object("bkt", "src", "bkt", "src",
                                       fmt.ObjectMeta("application/json"))
    assert replaced.content_type == "application/json" and replaced.user_metadata == ()
    assert (await store.get_object("cpy", "dst")).body == b"content"
    big = os.urandom(40 * KiB)
    await store.put_object("bkt", "big", big)
    await store.copy_object("bkt", "big", "cpy", "big")
    await store.delete_object("bkt", "big")
    assert (await store.get_object("cpy", "big")).body == big


# ----- listing -----------------------------------------------------------------------
async def _fill(store: Store, keys: list[str]) -> None:
    await store.create_bucket("lst")
    await asyncio.gather(*(store.put_object("lst", k, k.encode()) for k in keys))


LIST_KEYS = ["a", "a/1", "a/2", "a/b/1", "a/b/2", "b/1", "cpy", "c/d/e", "é/1", "z"]


async def test_list_prefix_delimiter(store: Store) -> None:
    await _fill(store, LIST_KEYS)
    every = store.list_objects("lst")
    assert [o.key for o in every.objects] == sorted(LIST_KEYS, key=str.encode)
    top = store.list_objects("lst", delimiter="/")
    assert [o.key for o in top.objects] == ["a", "cpy", "z"]
    assert top.common_prefixes == ["a/", "b/", "c/", "é/"]
    under_a = store.list_objects("lst", prefix="a/", delimiter="/")
    assert [o.key for o in under_a.objects] == ["a/1", "a/2"]
    assert under_a.common_prefixes == ["a/b/"]
    assert [o.key for o in store.list_objects("lst", prefix="a/b").objects] == ["a/b/1", "a/b/2"]
    assert store.list_objects("lst", prefix="nothing").objects == []


async def test_list_pagination_matches_full_listing(store: Store) -> None:
    await _fill(store, LIST_KEYS)
    for delimiter in ("", "/"):
        full = store.list_objects("lst", delimiter=delimiter)
        expected = [o.key for o in full.objects] + full.common_prefixes
        seen: list[str] = []
        after = ""
        for _ in range(20):
            page = store.list_objects("lst", delimiter=delimiter, start_after=after, max_keys=2)
            seen += [o.key for o in page.objects] + page.common_prefixes
            if not page.is_truncated:
                break
            assert page.next_marker is not None
            after = page.next_marker
        assert sorted(seen, key=str.encode) == sorted(expected, key=str.encode)
        assert len(seen) == len(expected)


async def test_list_start_after_inside_common_prefix(store: Store) -> None:
    await _fill(store, LIST_KEYS)
    page = store.list_objects("lst", delimiter="/", start_after="a/1")
    assert "a/" not in page.common_prefixes
    assert page.common_prefixes[0] == "b/"


# ----- batches -----------------------------------------------------------------------
async def test_put_objects_and_get_objects(store: Store) -> None:
    await store.create_bucket("bkt")
    items = [PutItem("bkt", f"k{i:03d}", os.urandom(i * 50)) for i in range(200)]
    items.append(PutItem("nope", "x", b"1"))
    items.append(PutItem("bkt", "big", os.urandom(20 * KiB)))
    results = await store.put_objects(items)
    assert isinstance(results[200], NoSuchBucket)
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 200)
    wanted = [GetItem("bkt", f"k{i:03d}") for i in reversed(range(200))]
    wanted += [GetItem("bkt", "missing"), GetItem("bkt", "k010"),
               GetItem("bkt", "k100", ByteRange(3, 4)), GetItem("bkt", "big"),
               GetItem("nope", "x")]
    got = await store.get_objects(wanted)
    assert len(got) == len(wanted)
    by_key = {i.key: i.data for i in items}
    for result in got[:200]:
        assert result.data == by_key[result.item.key] and result.error is None
    assert isinstance(got[200].error, NoSuchKey) and got[200].data is None
    assert got[201].data == by_key["k010"]
    assert got[202].data == by_key["k100"][3:7]
    assert got[203].data == by_key["big"]
    assert isinstance(got[204].error, NoSuchBucket)


async def test_batch_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(batch_items_max=10)
    async with await Store.open(StoreConfig(str(tmp_path), limits=limits)) as store:
        await store.create_bucket("bkt")
        with pytest.raises(TooManyItems):
            await store.put_objects([PutItem("bkt", str(i), b"x") for i in range(11)])
        with pytest.raises(TooManyItems):
            await store.get_objects([GetItem("bkt", str(i)) for i in range(11)])
        with pytest.raises(TooManyItems):
            await store.delete_objects("bkt", [str(i) for i in range(11)])


async def test_delete_objects(store: Store) -> None:
    await store.create_bucket("bkt")
    for key in ("x", "y"):
        await store.put_object("bkt", key, b"1")
    results = await store.delete_objects("bkt", ["x", "nope", "y", "k" * 2000])
    assert results[:3] == [True, False, True]
    assert isinstance(results[3], KeyTooLongError)
    assert store.list_objects("bkt").objects == []


# ----- durability modes, reopen, segments ---------------------------------------------
@pytest.mark.parametrize("durability", list(Durability))
async def test_durability_modes_round_trip_and_reopen(small_config, durability) -> None:  # type: ignore[no-untyped-def]
    config = StoreConfig(small_config.data_dir, durability=durability,
                         limits=small_config.limits)
    payloads = {f"k{i}": os.urandom(i * 37 % 5000) for i in range(300)}
    async with await Store.open(config) as store:
        await store.create_bucket("bkt")
        await asyncio.gather(*(store.put_object("bkt", k, v) for k, v in payloads.items()))
        await store.committer.wait_for_seals()
        assert len([r for r in store.applier.segments.values()
                    if r.state == fmt.SEGMENT_SEALED]) >= 1  # 300 * ~2.5 KiB > 256 KiB
    async with await Store.open(config) as store:
        assert store.stats().objects == len(payloads)
        for key, value in payloads.items():
            assert (await store.get_object("bkt", key)).body == value


async def test_concurrent_writers_share_commits(store: Store) -> None:
    await store.create_bucket("bkt")
    commits = 0
    original = store.committer._write

    def counting(writes):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        original(writes)

    store.committer._write = counting  # type: ignore[method-assign]
    await asyncio.gather(*(store.put_object("bkt", f"k{i}", b"x" * 100) for i in range(500)))
    assert commits < 100  # 500 writers, far fewer fsyncs: group commit


async def test_dead_bytes_accounted_per_segment(store: Store) -> None:
    await store.create_bucket("bkt")
    await store.put_object("bkt", "k", b"x" * 1000)
    before = store.stats()
    await store.put_object("bkt", "k", b"y" * 1000)
    after_overwrite = store.stats()
    assert after_overwrite.dead_bytes - before.dead_bytes >= 1000
    await store.delete_object("bkt", "k")
    after_delete = store.stats()
    assert after_delete.dead_bytes - after_overwrite.dead_bytes >= 1000
    assert after_delete.objects == 0


async def test_cold_sealed_reads_leave_the_event_loop(store: Store) -> None:
    """A sealed segment evicted from the page cache is read in a worker thread (the
    non-blocking read says it would block), and the bytes are still right."""
    await store.create_bucket("cold")
    payloads = {f"k{i}": os.urandom(3000) for i in range(150)}  # > one 256 KiB segment
    for key, value in payloads.items():
        await store.put_object("cold", key, value)
    await store.committer.wait_for_seals()
    blobs = os.path.join(store.config.data_dir, "blobs", "segments")
    for name in os.listdir(blobs):
        fd = os.open(os.path.join(blobs, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    sealed = [e.location for _, _, e in store.index.iter_all_objects()
              if e.location.segment_id not in store.committer.local]
    assert sealed and store._read_local(sealed[0]) is None  # would block: not inline
    for key, value in payloads.items():
        assert (await store.get_object("cold", key)).body == value
    got = await store.get_objects([GetItem("cold", k) for k in payloads])
    assert [g.data for g in got] == list(payloads.values())
