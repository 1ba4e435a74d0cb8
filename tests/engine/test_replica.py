"""petrel.replica: a read-only view of a store another process writes, as the
gateway's reader processes use it. Here the primary store and the replica share one
process (the RocksDB secondary instance does not care); the gateway tests run them as
separate processes."""

from __future__ import annotations

import os

import pytest
from test_corruption import BUCKET, fill, make_config, seal_active

from petrel import format as fmt
from petrel.errors import CorruptionError, NoSuchBucket, NoSuchKey, NotServedHere
from petrel.model import ByteRange
from petrel.replica import Generation, Replica, replica_dir
from petrel.store import Store


@pytest.fixture
async def primary(tmp_path):  # type: ignore[no-untyped-def]
    """(config, store): the primary's store, marking its writes for replicas."""
    config = make_config(str(tmp_path / "data"))
    store = await Store.open(config)
    os.makedirs(replica_dir(config.data_dir), exist_ok=True)
    generation = Generation(os.path.join(replica_dir(config.data_dir), "generation"),
                            create=True)
    store.kv.after_write = generation.bump
    yield config, store
    await store.close()


def _body(replica: Replica, key: str, byte_range: ByteRange | None = None) -> bytes:
    located = replica.locate_object(BUCKET, key)
    read = replica.read_object_now(located, byte_range)
    assert read is not None  # just written: in the page cache
    return read[0]


async def test_replica_sees_each_acknowledged_write(tmp_path, primary) -> None:  # type: ignore[no-untyped-def]
    config, store = primary
    replica = Replica(config, str(tmp_path / "secondary"))
    with pytest.raises(NoSuchBucket):
        replica.locate_object(BUCKET, "k/000")
    model = await fill(store, 40)
    for key, want in model.items():
        assert _body(replica, key) == want
    assert _body(replica, "k/003", ByteRange(5, 20)) == model["k/003"][5:25]
    catch_ups = replica.catch_ups
    for key in list(model)[:5]:  # nothing written since: no catch-up
        replica.locate_object(BUCKET, key)
    assert replica.catch_ups == catch_ups
    await store.put_object(BUCKET, "k/001", b"overwritten")
    # Keys not written since the last catch-up are read without catching up (a
    # catch-up costs milliseconds); the key written is caught up for.
    catch_ups = replica.catch_ups
    for key in ("k/005", "k/006", "k/007"):
        assert _body(replica, key) == model[key]
    assert replica.catch_ups == catch_ups
    assert _body(replica, "k/001") == b"overwritten"
    assert replica.catch_ups == catch_ups + 1
    await store.delete_object(BUCKET, "k/002")
    with pytest.raises(NoSuchKey):
        replica.locate_object(BUCKET, "k/002")
    # Sealed segments (moved to the local backend's directory) are read too, and a
    # cold read in a thread gives the same bytes.
    await seal_active(store)
    located = replica.locate_object(BUCKET, "k/010")
    stream = await replica.read_object(located)
    assert stream.body == model["k/010"]
    replica.close()


async def test_replica_leaves_what_it_cannot_read_to_the_primary(tmp_path, primary) -> None:  # type: ignore[no-untyped-def]
    config, store = primary
    model = await fill(store, 10)
    large = os.urandom(config.limits.pack_threshold_bytes + 1)
    await store.put_object(BUCKET, "large", large)
    replica = Replica(config, str(tmp_path / "secondary"))
    with pytest.raises(NotServedHere):
        replica.locate_object(BUCKET, "large")
    # A record in a segment that is no longer a local file (a remote backend's).
    segment_id = replica.locate_object(BUCKET, "k/001").entry.location.segment_id
    replica.close()
    await seal_active(store)
    for path in (os.path.join(config.data_dir, "segments", f"{segment_id:016x}.seg"),
                 os.path.join(config.data_dir, "blobs", fmt.segment_blob_name(segment_id))):
        if os.path.exists(path):
            os.unlink(path)
    replica = Replica(config, str(tmp_path / "secondary2"))
    with pytest.raises(NotServedHere):
        replica.locate_object(BUCKET, "k/001")
    assert "k/001" in model
    replica.close()


async def test_replica_detects_a_corrupt_record(tmp_path, primary) -> None:  # type: ignore[no-untyped-def]
    config, store = primary
    await fill(store, 5)
    replica = Replica(config, str(tmp_path / "secondary"))
    location = replica.locate_object(BUCKET, "k/004").entry.location
    path = os.path.join(config.data_dir, "segments", f"{location.segment_id:016x}.seg")
    with open(path, "r+b") as segment:
        segment.seek(location.offset + location.length - 3)
        byte = segment.read(1)
        segment.seek(-1, os.SEEK_CUR)
        segment.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(CorruptionError):
        _body(replica, "k/004")
    replica.close()


def test_generation_is_shared_through_its_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "generation")
    writer = Generation(path, create=True)
    reader = Generation(path, create=False)
    assert reader.value() == 0
    for _ in range(3):
        writer.bump()
    assert reader.value() == 3
    writer.close()
    reader.close()
