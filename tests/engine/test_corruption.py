"""Corruption on disk: a flipped bit is detected on read and reported (CorruptionError,
`corruptions_detected`, an error log line), and every other object keeps being served.
On reopen, corrupt bytes in the middle of an unsealed segment's unindexed tail are
skipped (the records after them are kept), while a torn last record is cut off.

Bits are flipped in the files themselves, found through the index (`Index.get_entry`):
in the active segment under `<data>/segments`, and in a sealed one under
`<data>/blobs/segments`, read inline (local backend) or through worker threads (a
backend that says its reads are not local, as a remote store's are).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from typing import Any

import pytest

from petrel import format as fmt
from petrel.backends.local import LocalBackend
from petrel.errors import CorruptionError, NoSuchKey
from petrel.limits import GiB, KiB, Limits
from petrel.model import ByteRange, GetItem, PutItem
from petrel.recovery import index_dir
from petrel.settings import StoreConfig
from petrel.store import Store

BUCKET = "bkt"
LIMITS = Limits(segment_bytes_max=256 * KiB, pack_threshold_bytes=16 * KiB)
VICTIM = "k/025"

Model = dict[str, bytes]


def make_config(data_dir: str, **overrides: Any) -> StoreConfig:
    settings: dict[str, Any] = {
        "limits": LIMITS, "compaction_interval_s": 3600.0, "compaction_delete_grace_s": 0.0,
        "compaction_bytes_per_s": 1 * GiB,
    }
    settings.update(overrides)
    return StoreConfig(data_dir=data_dir, **settings)


class RemoteReads:
    """The local backend, but the store must treat it as remote: sealed segments are
    read with `get_range` in worker threads, and batch reads take their remote path."""

    def __init__(self, inner: LocalBackend) -> None:
        self._inner = inner

    @property
    def reads_are_local(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def payload(key: str, version: int, size: int) -> bytes:
    head = f"{key}#{version}|".encode()
    return head + random.Random(f"{key}:{version}").randbytes(max(0, size - len(head)))


async def fill(store: Store, count: int = 50) -> Model:
    await store.create_bucket(BUCKET)
    model = {f"k/{i:03d}": payload(f"k/{i:03d}", 0, 100 + i * 57) for i in range(count)}
    results = await store.put_objects([PutItem(BUCKET, k, v) for k, v in model.items()])
    assert not [r for r in results if isinstance(r, Exception)]
    return model


async def seal_active(store: Store) -> int:
    """Seal the active segment now (no public call does; the idle sealer would)."""
    await store.flush()
    active = store.committer.active
    assert active is not None
    store.committer._roll()
    await store.committer.wait_for_seals()
    assert store.applier.segments[active.segment_id].state == fmt.SEGMENT_SEALED
    return active.segment_id


def entry_of(store: Store, key: str) -> fmt.Entry:
    bucket_id = store.applier.buckets[BUCKET].bucket_id
    entry = store.index.get_entry(bucket_id, key.encode())
    assert entry is not None
    return entry


def segment_file(store: Store, segment_id: int) -> str:
    """The file holding a segment: the local copy while unsealed, else the blob."""
    local = store.committer.local.get(segment_id)
    if local is not None:
        assert os.path.dirname(local.path) == os.path.join(store.config.data_dir, "segments")
        return local.path
    return os.path.join(store.config.data_dir, "blobs", fmt.segment_blob_name(segment_id))


def byte_in(entry: fmt.Entry, key: str, region: str) -> int:
    """An offset in the segment file inside one field of `key`'s record."""
    start = entry.location.offset
    key_start = start + fmt.RECORD_HEADER_BYTES
    payload_start = key_start + len(f"{BUCKET}/{key}".encode()) + len(entry.meta)
    end = start + entry.location.length
    offsets = {
        "payload": (payload_start + end - fmt.RECORD_CHECKSUM_BYTES) // 2,
        "key": key_start + len(BUCKET) + 2,
        "seq": start + 14,  # inside the header: covered by the checksum too
        "checksum": end - 3,
    }
    assert start < offsets[region] < end
    return offsets[region]


def flip_bit(path: str, offset: int, bit: int = 4) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        (value,) = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value ^ (1 << bit)]))
        handle.flush()
        os.fsync(handle.fileno())


async def read(store: Store, key: str) -> bytes | None:
    try:
        return (await store.get_object(BUCKET, key)).body
    except NoSuchKey:
        return None


async def check_served(store: Store, model: Model, corrupt: str) -> None:
    """`corrupt` fails its integrity check on every read path, counted each time; every
    other object reads back byte-identical, alone and in one batch with it."""
    before = store.corruptions_detected
    with pytest.raises(CorruptionError) as raised:
        await store.get_object(BUCKET, corrupt)
    assert raised.value.resource == f"{BUCKET}/{corrupt}"
    with pytest.raises(CorruptionError):
        await store.get_object(BUCKET, corrupt, ByteRange(0, 10))
    assert store.corruptions_detected == before + 2
    for key, want in model.items():
        if key != corrupt:
            assert await read(store, key) == want, key
    results = await store.get_objects([GetItem(BUCKET, k) for k in model])
    assert store.corruptions_detected == before + 3
    for key, result in zip(model, results, strict=True):
        if key == corrupt:
            assert isinstance(result.error, CorruptionError) and result.data is None
        else:
            assert result.error is None and result.data == model[key], key
    listed = [o.key for o in store.list_objects(BUCKET, max_keys=1000).objects]
    assert listed == sorted(model)


# ----- a flipped bit in a record -------------------------------------------------------
@pytest.mark.parametrize("where", ["active", "sealed", "sealed-remote"])
@pytest.mark.parametrize("region", ["payload", "key", "seq", "checksum"])
async def test_flipped_bit_is_detected_and_other_objects_are_served(
        tmp_path, caplog, where: str, region: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))

    def backend() -> RemoteReads | None:
        if where != "sealed-remote":
            return None
        return RemoteReads(LocalBackend(os.path.join(config.data_dir, "blobs")))

    async with await Store.open(config, backend()) as store:
        model = await fill(store)
        segment_id = entry_of(store, VICTIM).location.segment_id
        if where != "active":
            assert await seal_active(store) == segment_id
        path = segment_file(store, segment_id)
        assert (where == "active") == path.startswith(os.path.join(config.data_dir,
                                                                   "segments"))
        flip_bit(path, byte_in(entry_of(store, VICTIM), VICTIM, region))
        with caplog.at_level(logging.ERROR, logger="petrel.store"):
            await check_served(store, model, VICTIM)
        assert any(f"{BUCKET}/{VICTIM}" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records)
        assert store.stats().corruptions_detected == store.corruptions_detected == 3
    # Reopening does not choke on it; the object still fails, the rest is served; a new
    # write of the key replaces the corrupt record.
    async with await Store.open(config, backend()) as store:
        await check_served(store, model, VICTIM)
        model[VICTIM] = payload(VICTIM, 1, 300)
        await store.put_object(BUCKET, VICTIM, model[VICTIM])
        for key, want in model.items():
            assert await read(store, key) == want


async def test_compaction_refuses_a_victim_with_a_corrupt_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Compaction verifies what it copies: it stops rather than copy (or silently drop)
    a corrupt record, the victim stays as it was, and nothing else is disturbed."""
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store)
        victim = await seal_active(store)
        keep = {k: v for i, (k, v) in enumerate(model.items()) if i % 5 == 0}
        overwrite = {k: payload(k, 1, 10) for k in model if k not in keep}
        await store.put_objects([PutItem(BUCKET, k, v) for k, v in overwrite.items()])
        model.update(overwrite)
        assert VICTIM in keep and store.compactor.candidates() == [victim]  # type: ignore[attr-defined]
        flip_bit(segment_file(store, victim), byte_in(entry_of(store, VICTIM), VICTIM,
                                                      "payload"))
        with pytest.raises(CorruptionError):
            await store.compactor.compact_segment(victim)  # type: ignore[attr-defined]
        assert store.applier.segments[victim].state == fmt.SEGMENT_SEALED
        await check_served(store, model, VICTIM)
    async with await Store.open(config) as store:
        assert all(r.state in (fmt.SEGMENT_ACTIVE, fmt.SEGMENT_SEALED)
                   for r in store.applier.segments.values())
        assert len(list(store.backend.list("segments/"))) == 1
        await check_served(store, model, VICTIM)


async def test_corrupt_large_object_blob_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store, 10)
        big = payload("big", 0, 40 * KiB)  # above the pack threshold: a blob of its own
        await store.put_object(BUCKET, "big", big)
        model["big"] = big
        blob = store.large_blob_name(BUCKET, "big")
        flip_bit(os.path.join(config.data_dir, "blobs", blob), 20 * KiB)
        before = store.corruptions_detected
        with pytest.raises(CorruptionError):
            await store.get_object(BUCKET, "big")
        assert store.corruptions_detected == before + 1
        results = await store.get_objects([GetItem(BUCKET, k) for k in model])
        for key, result in zip(model, results, strict=True):
            if key == "big":
                assert isinstance(result.error, CorruptionError)
            else:
                assert result.data == model[key]


# ----- reopen: the unindexed tail of an unsealed segment -------------------------------
async def test_corrupt_bytes_inside_unindexed_tail_are_skipped_and_the_rest_kept(
        tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A machine crash can lose the index's last (unsynced) writes while the segment's
    records are on disk: reopening replays them from the index's watermark. Here the
    middle one of three such records is corrupt: it is skipped and reported, the
    records after it are kept, and nothing is cut."""
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store, 20)
        segment_id = entry_of(store, "k/000").location.segment_id
    snapshot = str(tmp_path / "index-at-crash")
    shutil.copytree(index_dir(config.data_dir), snapshot)  # the index as the crash left it
    tail = {f"tail/{i}": payload(f"tail/{i}", 0, 700) for i in range(3)}
    async with await Store.open(config) as store:
        for key, data in tail.items():  # three commits, appended to the same segment
            await store.put_object(BUCKET, key, data)
        entries = {k: entry_of(store, k) for k in tail}
        assert {e.location.segment_id for e in entries.values()} == {segment_id}
        path = segment_file(store, segment_id)
    size = os.path.getsize(path)
    shutil.rmtree(index_dir(config.data_dir))
    shutil.copytree(snapshot, index_dir(config.data_dir))
    flip_bit(path, byte_in(entries["tail/1"], "tail/1", "payload"))

    with caplog.at_level(logging.WARNING):
        store = await Store.open(config)
    async with store:
        assert store.open_report.replayed_records == 2
        assert store.open_report.cut_bytes == 0
        assert os.path.getsize(path) == size
        assert any(r.levelno == logging.ERROR and "corrupt" in r.getMessage()
                   for r in caplog.records)
        model.update({"tail/0": tail["tail/0"], "tail/2": tail["tail/2"]})
        for key, want in model.items():
            assert await read(store, key) == want, key
        assert await read(store, "tail/1") is None
        model["after"] = payload("after", 0, 500)
        await store.put_object(BUCKET, "after", model["after"])
    async with await Store.open(config) as store:
        assert store.open_report.replayed_records == 0
        for key, want in model.items():
            assert await read(store, key) == want, key
        assert store.stats().objects == len(model)


@pytest.mark.parametrize("kept", ["one-byte", "inside-header", "half", "all-but-one"])
async def test_torn_last_record_is_cut_and_acknowledged_writes_survive(
        tmp_path, kept: str) -> None:  # type: ignore[no-untyped-def]
    """A crash in the middle of an append leaves a partial record after the last one
    the index knows: it was never acknowledged. Reopening cuts it off, and later
    appends start where it began."""
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store, 30)
        path = segment_file(store, entry_of(store, "k/000").location.segment_id)
        seq = store.committer.seq + 1
    size = os.path.getsize(path)
    record = b"".join(fmt.encode_record(
        flags=0, key=f"{BUCKET}/torn".encode(), meta=b"", payload=payload("torn", 0, 900),
        seq=seq, mtime_ms=1, md5=bytes(16)).parts)
    length = {"one-byte": 1, "inside-header": fmt.RECORD_HEADER_BYTES - 5,
              "half": len(record) // 2, "all-but-one": len(record) - 1}[kept]
    with open(path, "ab") as handle:
        handle.write(record[:length])
    async with await Store.open(config) as store:
        assert store.open_report.cut_bytes == length
        assert store.open_report.replayed_records == 0
        assert os.path.getsize(path) == size
        for key, want in model.items():
            assert await read(store, key) == want, key
        assert await read(store, "torn") is None
        model["torn"] = payload("torn", 1, 900)
        await store.put_object(BUCKET, "torn", model["torn"])
        assert entry_of(store, "torn").location.offset == size
    async with await Store.open(config) as store:
        assert store.open_report.cut_bytes == 0
        for key, want in model.items():
            assert await read(store, key) == want, key
