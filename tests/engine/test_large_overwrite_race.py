"""A read of a large object that looked it up just before an overwrite or delete
committed finds its old blob gone (old blobs are deleted at once): it is answered as of
now (the new version, or NoSuchKey), never as an InternalError. The consistency suite
met this under concurrent batch gets and overwrites."""

from __future__ import annotations

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
