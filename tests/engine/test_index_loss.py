"""The index is derived data: a store whose index directory is gone rebuilds it from
the segments when it opens, and never reuses a segment id (which would replace a
sealed segment's blob and destroy the objects in it)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from petrel.index import IndexUnavailable
from petrel.settings import StoreConfig
from petrel.store import Store


def _blob_digests(config: StoreConfig) -> dict[str, str]:
    root = os.path.join(config.data_dir, "blobs", "segments")
    digests = {}
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), "rb") as handle:
            digests[name] = hashlib.sha256(handle.read()).hexdigest()
    return digests


async def test_missing_index_is_rebuilt_and_segment_ids_are_never_reused(
        small_config: StoreConfig) -> None:
    payloads = {f"k{i:04d}": os.urandom(2000 + i) for i in range(300)}
    async with await Store.open(small_config) as store:
        await store.create_bucket("lost")
        for key, value in payloads.items():
            await store.put_object("lost", key, value)
        await store.committer.wait_for_seals()
    sealed = _blob_digests(small_config)
    assert sealed, "the test needs sealed segments"
    shutil.rmtree(os.path.join(small_config.data_dir, "index"))

    async with await Store.open(small_config) as store:
        for key, value in payloads.items():
            assert (await store.get_object("lost", key)).body == value
        for i in range(300):  # enough new data to seal new segments
            await store.put_object("lost", f"new{i:04d}", os.urandom(3000))
        await store.committer.wait_for_seals()
    after = _blob_digests(small_config)
    assert {name: after[name] for name in sealed} == sealed  # untouched
    assert len(after) > len(sealed)


async def test_an_index_that_does_not_open_is_refused_not_replaced(
        small_config: StoreConfig) -> None:
    async with await Store.open(small_config) as store:
        await store.create_bucket("kept")
        await store.put_object("kept", "k", b"v")
    index = os.path.join(small_config.data_dir, "index")
    shutil.rmtree(index)
    with open(index, "wb") as handle:
        handle.write(b"not a directory")
    with pytest.raises(IndexUnavailable, match="cannot open the index"):
        await Store.open(small_config)
    with open(index, "rb") as handle:
        assert handle.read() == b"not a directory"  # left for the operator to inspect
