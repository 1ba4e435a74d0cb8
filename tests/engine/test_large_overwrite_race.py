"""A read of a large object that looked it up just before an overwrite or delete
committed finds its old blob gone (old blobs are deleted at once, unless streamed): it
is answered as of now (the new version, or NoSuchKey), never as an InternalError. A
stream of a large object keeps its blob until it ends, so a GET whose headers are sent
never has its body cut short by a writer. The consistency suite met both races, under
concurrent batch gets, GETs and overwrites."""

from __future__ import annotations

import asyncio
import os

import pytest

from petrel.errors import BlobNotFound, NoSuchKey
from petrel.settings import StoreConfig
from petrel.store import Store


async def test_read_racing_an_overwrite_of_a_large_object(small_config: StoreConfig) -> None:
    big = small_config.limits.pack_threshold_bytes + 1000
    async with await Store.open(small_config) as store:
        await store.create_bucket("race")
        old, new = os.urandom(big), os.urandom(big)
        await store.put_object("race", "k", old)
        real_read = store._read_large
        calls = 0

        async def overwrite_then_read(payload: bytes, start: int, length: int) -> bytes:
            # Looked up; now overwritten (its old blob deleted) before the blob is read,
            # as when a writer wins the race (fault injection).
            nonlocal calls
            calls += 1
            if calls == 1:
                await store.put_object("race", "k", new)
                raise BlobNotFound("no blob (deleted by the overwrite)")
            return await real_read(payload, start, length)

        store._read_large = overwrite_then_read  # type: ignore[method-assign]
        assert (await store.get_object("race", "k")).body == new

        async def delete_then_read(payload: bytes, start: int, length: int) -> bytes:
            await store.delete_object("race", "k")
            raise BlobNotFound("no blob (deleted with the object)")

        store._read_large = delete_then_read  # type: ignore[method-assign]
        with pytest.raises(NoSuchKey):
            await store.get_object("race", "k")


async def test_a_missing_blob_of_an_unchanged_object_is_still_an_error(
        small_config: StoreConfig) -> None:
    big = small_config.limits.pack_threshold_bytes + 1000
    async with await Store.open(small_config) as store:
        await store.create_bucket("gone")
        await store.put_object("gone", "k", os.urandom(big))
        os.unlink(os.path.join(small_config.data_dir, "blobs",
                               store.large_blob_name("gone", "k")))
        with pytest.raises(BlobNotFound):
            await store.get_object("gone", "k")


async def _settle(store: Store) -> None:
    """Until the store's background deletions have run."""
    while store._background:
        await asyncio.gather(*list(store._background), return_exceptions=True)


@pytest.mark.parametrize("change", ["overwrite", "delete"])
async def test_a_stream_keeps_its_blob_through_an_overwrite_or_delete(
        small_config: StoreConfig, change: str) -> None:
    # A GET streaming a large object (headers sent, body in chunks) while a writer
    # overwrites or deletes it: the old blob is kept until the stream ends, so the
    # reader gets the whole old version; it is deleted right after.
    big = small_config.limits.pack_threshold_bytes * 3 + 1000
    async with await Store.open(small_config) as store:
        await store.create_bucket("race")
        old, new = os.urandom(big), os.urandom(big)
        await store.put_object("race", "k", old)
        blob = store.large_blob_name("race", "k")
        path = os.path.join(small_config.data_dir, "blobs", blob)
        stream = await store.read_object(store.locate_object("race", "k"),
                                         chunk_bytes=small_config.limits.pack_threshold_bytes)
        got = [await stream.chunks.__anext__()]
        if change == "overwrite":
            await store.put_object("race", "k", new)
        else:
            await store.delete_object("race", "k")
        await _settle(store)
        assert os.path.exists(path), "the blob went while it was being streamed"
        got += [chunk async for chunk in stream.chunks]
        assert b"".join(got) == old
        await _settle(store)
        assert not os.path.exists(path), "the blob outlived its last stream"
        if change == "overwrite":
            assert (await store.get_object("race", "k")).body == new


async def test_a_stream_dropped_unread_releases_its_blob(small_config: StoreConfig) -> None:
    big = small_config.limits.pack_threshold_bytes + 1000
    async with await Store.open(small_config) as store:
        await store.create_bucket("race")
        await store.put_object("race", "k", os.urandom(big))
        path = os.path.join(small_config.data_dir, "blobs", store.large_blob_name("race", "k"))
        stream = await store.read_object(store.locate_object("race", "k"))
        await store.delete_object("race", "k")
        await _settle(store)
        assert os.path.exists(path)
        del stream  # never read (a client gone before the body was sent)
        await _settle(store)
        assert not os.path.exists(path)
        assert store._large_reads == {} and store._orphans_held == {}
