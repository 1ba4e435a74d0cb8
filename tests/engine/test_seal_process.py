"""Sealing in a process of its own (petrel/sealer.py): the footer is written by a child
process, not a thread of the store's, and that child comes and goes with the store. If
it dies mid-seal, the seal is done in a thread instead; if it cannot be had at all,
likewise; a killed parent takes the child with it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_corruption import BUCKET, fill, make_config, read, seal_active

from petrel import format as fmt
from petrel import sealer
from petrel.model import PutItem
from petrel.segments import list_local_segments, read_footer, seal_file
from petrel.store import Store


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's init) counts as gone.
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _footer_keys(path: str, segment_id: int) -> list[bytes]:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        def reader(offset: int, length: int) -> bytes:
            return os.pread(handle.fileno(), length, offset)
        return [entry.key for entry in read_footer(reader, size, segment_id)]


async def test_a_seal_runs_in_the_seal_process_which_stops_with_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with await Store.open(make_config(str(tmp_path / "data"))) as store:
        model = await fill(store, 40)
        process = store.committer.sealer.process
        assert process is not None and process.pid is None  # started on the first seal
        segment_id = await seal_active(store)
        child = process.pid
        assert child is not None and child != os.getpid()
        with open(f"/proc/{child}/cmdline", "rb") as handle:
            assert b"petrel.sealer" in handle.read()
        for key, want in model.items():
            assert await read(store, key) == want
        blob = os.path.join(str(tmp_path / "data"), "blobs", "segments",
                            f"{segment_id:016x}.seg")
        objects = [key for key in _footer_keys(blob, segment_id) if b"/" in key]
        assert sorted(objects) == sorted(f"{BUCKET}/{k}".encode() for k in model)
    assert _wait_gone(child), "the seal process outlived its store"


async def test_a_seal_process_killed_mid_seal_is_replaced_by_a_thread(  # type: ignore[no-untyped-def]
        tmp_path, monkeypatch) -> None:
    # The child is killed as the request goes out (SIGKILL, waited for): the store
    # seals that segment in a thread, and the next seal starts a new child.
    killed: list[int] = []
    real_send = sealer._send

    def send_after_killing(stream, value):  # type: ignore[no-untyped-def]
        process = store.committer.sealer.process
        assert process is not None and process._child is not None
        if not killed:
            killed.append(process._child.pid)
            os.kill(process._child.pid, signal.SIGKILL)
            process._child.wait()
        real_send(stream, value)

    monkeypatch.setattr(sealer, "_send", send_after_killing)
    async with await Store.open(make_config(str(tmp_path / "data"))) as store:
        model = await fill(store, 30)
        first = await seal_active(store)
        assert killed and not _alive(killed[0])
        monkeypatch.setattr(sealer, "_send", real_send)
        await store.create_bucket("other")
        await store.put_object("other", "x", b"after the kill")
        second = await seal_active(store)
        process = store.committer.sealer.process
        assert process is not None and process.pid not in (None, killed[0])
        assert second != first
        for key, want in model.items():
            assert await read(store, key) == want
        assert (await store.get_object("other", "x")).body == b"after the kill"


async def test_a_seal_process_that_cannot_start_leaves_sealing_to_a_thread(  # type: ignore[no-untyped-def]
        tmp_path, monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(sealer.subprocess, "Popen", refuse)
    async with await Store.open(make_config(str(tmp_path / "data"))) as store:
        model = await fill(store, 20)
        await seal_active(store)
        assert store.committer.sealer.process is not None
        assert store.committer.sealer.process.pid is None
        for key, want in model.items():
            assert await read(store, key) == want


def test_the_seal_process_answers_what_seal_file_answers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The same unsealed segment sealed by the child and in this process: same result,
    # same bytes; an error seal_file raises (a file that is no segment) comes back as
    # that error.
    import asyncio

    async def make() -> str:
        config = make_config(str(tmp_path / "data"), seal_idle_s=3600.0)
        store = await Store.open(config)
        await fill(store, 25)
        await store.flush()
        active = store.committer.active
        assert active is not None
        path = active.path
        shutil.copyfile(path, str(tmp_path / "copy.seg"))
        await store.close()
        return str(tmp_path / "copy.seg")

    original = asyncio.run(make())
    twin = str(tmp_path / "twin.seg")
    shutil.copyfile(original, twin)
    process = sealer.SealProcess()
    try:
        assert process.seal(original) == seal_file(twin)
        with open(original, "rb") as one, open(twin, "rb") as two:
            assert one.read() == two.read()
        junk = str(tmp_path / "junk.seg")
        with open(junk, "wb") as handle:
            handle.write(b"not a segment at all" * 10)
        with pytest.raises(fmt.CorruptSegment):
            seal_file(junk)
        with pytest.raises(fmt.CorruptSegment):
            process.seal(junk)
    finally:
        process.close()


def test_the_seal_process_dies_with_its_parent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A parent killed outright (SIGKILL: no close) takes its seal process with it, so
    # no footer is written under a store that the next gateway has reopened. Another
    # process holds the child's stdin open here, as a busy child would not read it:
    # only the child's watch on its parent can end it.
    script = (
        "import subprocess, sys, time\n"
        "from petrel import sealer\n"
        "p = sealer.SealProcess()\n"
        "child = p._started()\n"
        "holder = subprocess.Popen(['sleep', '60'], pass_fds=(child.stdin.fileno(),))\n"
        "print(child.pid, holder.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=str(tmp_path))
    holder = None
    try:
        assert parent.stdout is not None
        child, holder = (int(pid) for pid in parent.stdout.readline().split())
        assert _alive(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child), "the seal process outlived a killed parent"
    finally:
        parent.kill()
        parent.wait()
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)


async def test_close_waits_for_a_rolled_segment_being_sealed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The segment that filled up is being sealed (its seal process just starting) when
    # the store closes: close lets that seal finish instead of cancelling it, so only
    # the active segment is left in segments/.
    data_dir = str(tmp_path / "data")
    async with await Store.open(make_config(data_dir)) as store:
        await store.create_bucket(BUCKET)
        await store.put_objects([PutItem(BUCKET, f"big/{i}", bytes([i]) * 15_000)
                                 for i in range(20)])  # 300 KB: rolls a 256 KiB segment
        rolled = set(store.committer.local) - {store.committer.active.segment_id}  # type: ignore[union-attr]
        assert rolled, "no segment rolled"
        active = store.committer.active.segment_id  # type: ignore[union-attr]
    assert list_local_segments(os.path.join(data_dir, "segments")) == [active]
    async with await Store.open(make_config(data_dir)) as store:
        for segment_id in rolled:
            assert store.applier.segments[segment_id].state == fmt.SEGMENT_SEALED
        for i in range(20):
            assert (await store.get_object(BUCKET, f"big/{i}")).body == bytes([i]) * 15_000
