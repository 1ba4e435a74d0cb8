"""Disk faults at the engine level, injected into the syscalls the store makes:

* a disk full (ENOSPC) while a commit writes its records: the commit's writers get
  InsufficientStorage, the segment is cut back to its last committed record (a whole
  record of the failed commit never comes back, not even after a reopen), acknowledged
  objects stay intact, and writes are taken again once the disk has room;
* a failed fsync (EIO) keeps the store read-only until it is reopened (fsync errors are
  not retried: the kernel may have dropped the pages it failed to write);
* a filesystem that refuses RWF_NOWAIT (tmpfs: EOPNOTSUPP): sealed segments are still
  read, in worker threads;
* a sealed segment cut short under the store: a record past the cut is corruption
  (CorruptionError, counted, logged), never a client error, and the records before the
  cut are still served, alone and in batches.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from typing import Any

import pytest
from test_corruption import (
    BUCKET,
    RemoteReads,
    entry_of,
    fill,
    make_config,
    payload,
    read,
    seal_active,
    segment_file,
)

from petrel import format as fmt
from petrel import segments
from petrel.backends.local import LocalBackend
from petrel.errors import (
    CorruptionError,
    InsufficientStorage,
    InternalError,
    NoSuchKey,
    ServiceUnavailable,
)
from petrel.model import ByteRange, GetItem, PutItem
from petrel.store import Store

Model = dict[str, bytes]


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFillsUp:
    """`os.pwritev` and `os.pwrite` while `armed`: the first pwritev writes only
    `room` bytes and returns a short count (a whole record may be among them), and the
    write that follows it fails with ENOSPC, as on a disk that fills up mid-commit."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.armed = False
        self.failures = 0
        self._pwritev = os.pwritev

    def pwritev(self, fd: int, buffers: Sequence[bytes], offset: int, *args: Any) -> int:
        if not self.armed:
            return self._pwritev(fd, buffers, offset, *args)
        data = b"".join(buffers)[: self.room]
        return self._pwritev(fd, [data], offset) if data else self.pwrite(fd, b"", offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self.failures += 1
        raise no_space()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskFillsUp:
    fault = DiskFillsUp(room=0)
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        return fault.pwrite(fd, data, offset) if fault.armed else real_pwrite(fd, data, offset)

    monkeypatch.setattr(segments.os, "pwritev", fault.pwritev)
    monkeypatch.setattr(segments.os, "pwrite", pwrite)
    return fault


async def check_model(store: Store, model: Model, gone: Sequence[str]) -> None:
    for key, want in model.items():
        assert await read(store, key) == want, key
    for key in gone:
        with pytest.raises(NoSuchKey):
            await store.get_object(BUCKET, key)


# ----- disk full while writing -----------------------------------------------------------
async def test_disk_full_fails_the_commit_cuts_it_off_and_writes_resume(
        tmp_path, disk: DiskFillsUp) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    failed = [f"full/{i}" for i in range(4)]
    async with await Store.open(config) as store:
        model = await fill(store, 20)
        active = store.committer.active
        assert active is not None
        committed_bytes = os.fstat(active.fd).st_size
        first = fmt.encode_record(flags=0, key=f"{BUCKET}/{failed[0]}".encode(), meta=b"",
                                  payload=payload(failed[0], 0, 3000), seq=1, mtime_ms=0)
        disk.room = first.length + 100  # one whole record and a bit of the next
        disk.armed = True
        with pytest.raises(InsufficientStorage) as raised:
            await store.put_objects([PutItem(BUCKET, k, payload(k, 0, 3000))
                                     for k in failed])
        assert raised.value.status == 507 and raised.value.code == "InsufficientStorage"
        assert "full" in raised.value.detail
        assert disk.failures == 1
        # Cut back to the last committed record: the whole record written is gone too.
        assert os.fstat(active.fd).st_size == committed_bytes
        assert active.tail == active.durable == committed_bytes
        # Still full: the next write fails the same way, and nothing is left of it.
        disk.room = 0
        with pytest.raises(InsufficientStorage):
            await store.put_object(BUCKET, "full/again", b"x" * 1000)
        assert os.fstat(active.fd).st_size == committed_bytes
        await check_model(store, model, [*failed, "full/again"])
        # Space is back: writes are taken again, into the same segment.
        disk.armed = False
        store.committer.check_writable()
        model["resumed"] = payload("resumed", 0, 2000)
        await store.put_object(BUCKET, "resumed", model["resumed"])
        assert store.committer.active is active
        await check_model(store, model, failed)
    # After a reopen (which replays the segment's tail) the failed writes stay failed.
    async with await Store.open(config) as store:
        await check_model(store, model, [*failed, "full/again"])


async def test_full_disk_is_refused_until_space_returns(
        tmp_path, disk: DiskFillsUp, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """After a write found the disk full, writes (and /healthz, which asks
    check_writable) get InsufficientStorage without touching the disk while statvfs
    shows it full, and are let through as soon as it shows room."""
    config = make_config(str(tmp_path / "data"))
    free_bytes = 0
    real_statvfs = os.statvfs

    class Stat:
        def __init__(self, path: str) -> None:
            self.f_frsize = real_statvfs(path).f_frsize
            self.f_bavail = free_bytes // self.f_frsize

    monkeypatch.setattr("petrel.commit.os.statvfs", Stat)
    async with await Store.open(config) as store:
        model = await fill(store, 5)
        disk.armed = True
        with pytest.raises(InsufficientStorage):
            await store.put_object(BUCKET, "full/0", b"x" * 5000)
        disk.armed = False
        with pytest.raises(InsufficientStorage):
            store.committer.check_writable()
        with pytest.raises(InsufficientStorage):
            await store.put_object(BUCKET, "full/1", b"x" * 5000)
        assert disk.failures == 1  # refused before writing
        free_bytes = 10 * 1024 * 1024
        store.committer.check_writable()
        await store.put_object(BUCKET, "resumed", b"y" * 5000)
        model["resumed"] = b"y" * 5000
        await check_model(store, model, ["full/0", "full/1"])


async def test_disk_full_creating_a_segment_leaves_no_file(
        tmp_path, disk: DiskFillsUp) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store, 5)
        await store.flush()
        store.committer._roll()  # the next write creates a segment
        files = sorted(os.listdir(os.path.join(config.data_dir, "segments")))
        disk.armed = True
        with pytest.raises(InsufficientStorage):
            await store.put_objects([PutItem(BUCKET, "new/0", b"a" * 100)])
        assert sorted(os.listdir(os.path.join(config.data_dir, "segments"))) == files
        disk.armed = False
        model["new/1"] = b"b" * 100
        await store.put_object(BUCKET, "new/1", model["new/1"])
        await check_model(store, model, ["new/0"])
    async with await Store.open(config) as store:
        await check_model(store, model, ["new/0"])


async def test_failed_fsync_keeps_the_store_read_only(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        model = await fill(store, 5)

        def fdatasync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(segments.os, "fdatasync", fdatasync)
        with pytest.raises(InternalError):
            await store.put_object(BUCKET, "lost", b"z" * 100)
        monkeypatch.undo()
        for _ in range(2):  # not retried, even once the disk answers again
            with pytest.raises(ServiceUnavailable, match="read-only"):
                await store.put_object(BUCKET, "later", b"z" * 100)
        for key, want in model.items():
            assert await read(store, key) == want
    async with await Store.open(config) as store:  # reopening takes writes again
        await store.put_object(BUCKET, "later", b"z" * 100)
        for key, want in model.items():
            assert await read(store, key) == want


# ----- a filesystem without RWF_NOWAIT ----------------------------------------------------
async def test_sealed_segments_read_where_rwf_nowait_is_refused(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    calls: list[int] = []

    def preadv(fd: int, buffers: Sequence[bytearray], offset: int, flags: int = 0) -> int:
        calls.append(flags)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))  # as tmpfs does

    async with await Store.open(config) as store:
        model = await fill(store, 30)
        await seal_active(store)
        monkeypatch.setattr(segments.os, "preadv", preadv)
        for key, want in model.items():
            assert await read(store, key) == want, key
        results = await store.get_objects([GetItem(BUCKET, k) for k in model])
        assert [r.data for r in results] == list(model.values())
        assert len(calls) == 1  # remembered: not asked again
        assert store.corruptions_detected == 0


# ----- a sealed segment cut short ---------------------------------------------------------
@pytest.mark.parametrize("reads", ["local", "remote"])
async def test_truncated_sealed_segment_is_corruption(
        tmp_path, caplog, reads: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    backend = RemoteReads(LocalBackend(os.path.join(config.data_dir, "blobs"))) \
        if reads == "remote" else None
    async with await Store.open(config, backend) as store:
        model = await fill(store, 50)
        victim = "k/025"
        segment_id = entry_of(store, victim).location.segment_id
        assert await seal_active(store) == segment_id
        cut = entry_of(store, victim).location.offset + 40
        os.truncate(segment_file(store, segment_id), cut)
        gone = [k for k in model if entry_of(store, k).location.offset + 40 >= cut]
        assert victim in gone and len(gone) < len(model)
        with caplog.at_level(logging.ERROR, logger="petrel.store"), \
                pytest.raises(CorruptionError) as raised:
            await store.get_object(BUCKET, victim)
        assert raised.value.status == 500 and raised.value.code == "InternalError"
        assert raised.value.resource == f"{BUCKET}/{victim}"
        assert "segments/" not in raised.value.detail and ".seg" not in raised.value.detail
        assert store.corruptions_detected == 1
        assert any(f"{BUCKET}/{victim}" in r.getMessage() and f"{segment_id:x}" in
                   r.getMessage() for r in caplog.records)
        with pytest.raises(CorruptionError):
            await store.get_object(BUCKET, victim, ByteRange(0, 10))
        located = store.locate_object(BUCKET, victim)
        with pytest.raises(CorruptionError):
            await store.read_object(located)
        before = store.corruptions_detected
        results = await store.get_objects([GetItem(BUCKET, k) for k in model])
        for key, result in zip(model, results, strict=True):
            if key in gone:
                assert isinstance(result.error, CorruptionError), (key, result.error)
            else:
                assert result.error is None and result.data == model[key], key
        assert store.corruptions_detected == before + len(gone)
        for key in model:
            if key not in gone:
                assert await read(store, key) == model[key], key


async def test_truncated_large_object_blob_is_corruption(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = make_config(str(tmp_path / "data"))
    async with await Store.open(config) as store:
        await store.create_bucket(BUCKET)
        data = payload("big", 0, 100_000)  # over the pack threshold: its own blob
        await store.put_object(BUCKET, "big", data)
        path = store.backend.path_of(store.large_blob_name(BUCKET, "big"))  # type: ignore[attr-defined]
        os.truncate(path, 50_000)
        with pytest.raises(CorruptionError) as raised:
            await store.get_object(BUCKET, "big")
        assert "objects/" not in raised.value.detail
        stream = await store.open_object(BUCKET, "big", chunk_bytes=16_384)
        with pytest.raises(CorruptionError):
            async for _ in stream.chunks:
                pass
        assert store.corruptions_detected == 2
