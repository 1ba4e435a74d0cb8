"""LocalBackend: the conformance suite, plus what only a local directory has: the
open-file cache, the ``.tmp`` staging directory, and hard links for put_file."""

from __future__ import annotations

import errno
import gc
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("conformance")

from conformance import BackendConformance, blob_bytes  # noqa: E402

from petrel.backends import local  # noqa: E402
from petrel.backends.base import Backend  # noqa: E402
from petrel.backends.local import LocalBackend  # noqa: E402
from petrel.errors import BackendError, BlobNotFound, InvalidArgument  # noqa: E402

SHM = "/dev/shm"


class TestLocalBackendConformance(BackendConformance):
    def make_backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(str(tmp_path / "blobs"))


class TestLocalBackendTinyCache(BackendConformance):
    """The whole suite again with a one-handle cache: every read evicts."""

    large_blob_bytes = 1024 * 1024

    def make_backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(str(tmp_path / "blobs"), open_files_max=1)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def backend(root: Path) -> Iterator[LocalBackend]:
    made = LocalBackend(str(root), open_files_max=4)
    try:
        yield made
    finally:
        made.close()


def open_fds_under(root: Path) -> int:
    gc.collect()  # evicted handles close when their last reference goes
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root) + os.sep):
            count += 1
    return count


def test_open_files_max_must_be_positive(root: Path) -> None:
    with pytest.raises(ValueError):
        LocalBackend(str(root), open_files_max=0)


# ----- the open-file cache ------------------------------------------------------------
def test_open_file_cache_is_bounded(backend: LocalBackend, root: Path) -> None:
    for i in range(20):
        backend.put_bytes(f"b/{i}", blob_bytes(i, 100))
    for i in range(20):
        assert backend.get_range(f"b/{i}", 0, 100) == blob_bytes(i, 100)
        assert len(backend._files) <= 4
    assert len(backend._files) == 4
    assert open_fds_under(root) == 4
    backend.close()
    assert open_fds_under(root) == 0


def test_cache_hits_keep_recent_handles(backend: LocalBackend) -> None:
    for i in range(5):
        backend.put_bytes(f"b/{i}", b"x")
    for i in range(4):
        backend.get_range(f"b/{i}", 0, 1)
    backend.get_range("b/0", 0, 1)  # most recently used now
    backend.get_range("b/4", 0, 1)  # evicts b/1, the least recently used
    assert sorted(os.path.basename(p) for p in backend._files) == ["0", "2", "3", "4"]


def test_eviction_does_not_break_concurrent_readers(root: Path) -> None:
    tiny = LocalBackend(str(root), open_files_max=2)
    names = [f"b/{i}" for i in range(16)]
    for i, name in enumerate(names):
        tiny.put_bytes(name, blob_bytes(i, 8192))
    failures: list[str] = []

    def reader(slot: int) -> None:
        rng = random.Random(slot)
        for _ in range(400):
            i = rng.randrange(len(names))
            offset = rng.randrange(8192)
            length = rng.randint(0, 8192 - offset)
            try:
                got = tiny.get_range(names[i], offset, length)
            except Exception as exc:  # noqa: BLE001 - reported below, with its type
                failures.append(repr(exc))
                continue
            if got != blob_bytes(i, 8192)[offset : offset + length]:
                failures.append(f"{names[i]} {offset}+{length}: wrong bytes")

    threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(tiny._files) <= 2
    assert open_fds_under(root) <= 2
    tiny.close()


# ----- stale handles: a read racing a replace or delete must not cache the old file ---
def _hook_open(monkeypatch: pytest.MonkeyPatch, path: str, during: Any) -> None:
    """Run `during()` once, right after `_open` has opened `path` for reading."""
    fired = []

    def hooked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller
        if file == path and mode == "rb" and not fired:
            fired.append(True)
            during()
        return handle

    monkeypatch.setattr(local, "open", hooked_open, raising=False)


def test_replace_during_open_is_not_cached(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.put_bytes("x", b"old!")
    _hook_open(monkeypatch, backend.path_of("x"), lambda: backend.put_bytes("x", b"new!"))
    assert backend.get_range("x", 0, 4) == b"old!"  # began before the put: old is fine
    assert backend.get_range("x", 0, 4) == b"new!"


def test_delete_during_open_is_not_cached(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.put_bytes("x", b"old!")
    _hook_open(monkeypatch, backend.path_of("x"), lambda: backend.delete("x"))
    assert backend.get_range("x", 0, 4) == b"old!"
    with pytest.raises(BlobNotFound):
        backend.get_range("x", 0, 4)


def test_read_during_delete_is_not_cached(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.put_bytes("x", b"old!")
    backend.get_range("x", 0, 4)
    path = backend.path_of("x")
    real_unlink = os.unlink

    def unlink_after_a_read(target: Any, *args: Any, **kwargs: Any) -> None:
        if target == path:
            assert backend.get_range("x", 0, 4) == b"old!"
        real_unlink(target, *args, **kwargs)

    monkeypatch.setattr(local.os, "unlink", unlink_after_a_read)
    backend.delete("x")
    monkeypatch.undo()
    with pytest.raises(BlobNotFound):
        backend.get_range("x", 0, 4)


# ----- crash safety: the .tmp staging directory ---------------------------------------
def test_successful_puts_leave_no_temporary_files(
    backend: LocalBackend, root: Path, tmp_path: Path
) -> None:
    backend.put_bytes("a/b", b"bytes")
    source = tmp_path / "source"
    source.write_bytes(b"file")
    backend.put_file("a/c", str(source))
    backend.put_file("a/c", str(source))  # same inode twice: rename is a no-op
    assert os.listdir(root / ".tmp") == []
    assert list(backend.list()) == ["a/b", "a/c"]


def test_leftover_temporary_files_are_invisible(backend: LocalBackend, root: Path) -> None:
    # What a crash between write and rename leaves behind.
    (root / ".tmp" / "0123456789abcdef").write_bytes(b"half a blob")
    (root / ".tmp" / "sub").mkdir()
    (root / ".tmp" / "sub" / "x").write_bytes(b"?")
    backend.put_bytes("x", b"whole")
    assert list(backend.list()) == ["x"]
    assert list(backend.list(".")) == []
    reopened = LocalBackend(str(root))
    assert list(reopened.list()) == ["x"]
    reopened.close()


@pytest.mark.parametrize("name", [".tmp", ".tmp/x", ".tmp/0123456789abcdef"])
def test_staging_directory_is_reserved(backend: LocalBackend, name: str) -> None:
    with pytest.raises(InvalidArgument):
        backend.put_bytes(name, b"x")
    with pytest.raises(InvalidArgument):
        backend.get_range(name, 0, 0)
    with pytest.raises(InvalidArgument):
        backend.delete(name)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_put_bytes_leaves_nothing(
    backend: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    backend.put_bytes("x", b"old")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(local.os, failing, fail)
    with pytest.raises(BackendError):
        backend.put_bytes("x", b"new bytes")
    with pytest.raises(BackendError):
        backend.put_bytes("y", b"new bytes")
    monkeypatch.undo()
    assert os.listdir(root / ".tmp") == []
    assert list(backend.list()) == ["x"]
    assert backend.get_range("x", 0, 3) == b"old"


def test_blob_below_a_blob_is_refused(backend: LocalBackend, root: Path) -> None:
    # A file cannot also be a directory: the put fails cleanly, as a BackendError.
    backend.put_bytes("a", b"a")
    with pytest.raises(BackendError):
        backend.put_bytes("a/b", b"b")
    assert os.listdir(root / ".tmp") == []
    assert list(backend.list()) == ["a"]


# ----- put_file: hard link, or copy ---------------------------------------------------
def test_put_file_hard_links_on_the_same_filesystem(backend: LocalBackend, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"sealed segment")
    backend.put_file("segments/1.seg", str(source))
    stored = os.stat(backend.path_of("segments/1.seg"))
    assert stored.st_ino == os.stat(source).st_ino
    assert stored.st_nlink == 2
    source.unlink()
    assert backend.get_range("segments/1.seg", 0, 14) == b"sealed segment"


def test_put_file_of_a_read_only_source(backend: LocalBackend, tmp_path: Path) -> None:
    # The hard link shares the source's mode; the fsync must not need write access.
    source = tmp_path / "source"
    source.write_bytes(b"read only")
    source.chmod(0o444)
    backend.put_file("x", str(source))
    assert backend.get_range("x", 0, 9) == b"read only"


@pytest.mark.parametrize("error", [errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP])
def test_put_file_copies_when_it_cannot_link(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(local.os, "link", refuse)
    data = blob_bytes(1, 100_000)
    source = tmp_path / "source"
    source.write_bytes(data)
    backend.put_file("x", str(source))
    monkeypatch.undo()
    assert os.stat(backend.path_of("x")).st_ino != os.stat(source).st_ino
    source.write_bytes(b"the copy is independent of the source")
    assert backend.get_range("x", 0, len(data)) == data


def test_put_file_other_link_errors_fail(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(local.os, "link", refuse)
    source = tmp_path / "source"
    source.write_bytes(b"data")
    with pytest.raises(BackendError):
        backend.put_file("x", str(source))
    assert list(backend.list()) == []


@pytest.mark.skipif(
    not os.path.isdir(SHM) or not os.access(SHM, os.W_OK),
    reason="needs a second filesystem at /dev/shm",
)
def test_put_file_across_filesystems_copies(backend: LocalBackend, root: Path) -> None:
    if os.stat(SHM).st_dev == os.stat(root).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the backend")
    data = blob_bytes(2, 50_000)
    source = Path(SHM) / f"petrel-test-{os.getpid()}-{random.getrandbits(32):08x}"
    try:
        source.write_bytes(data)
        backend.put_file("x", str(source))
    finally:
        source.unlink()
    assert backend.get_range("x", 0, len(data)) == data
