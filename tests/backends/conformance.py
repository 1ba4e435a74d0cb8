"""The backend conformance suite: every clause of the contracts in `petrel.backends.base`.

One suite, subclassed by every backend (as fsspec does with ``fsspec/tests/abstract``).
A backend's test module subclasses `BackendConformance` and supplies `make_backend`::

    class TestS3Backend(BackendConformance):
        def make_backend(self, tmp_path: Path) -> Backend:
            return S3Backend(endpoint, bucket=fresh_bucket())  # e.g. a real SeaweedFS

`make_backend` must return an *empty* backend, private to the test: tests assert on
`list()` and expect no other blobs. The suite closes it afterwards. `tmp_path` is also
where tests write their local source and destination files (under ``scratch/``).

The suite only uses the protocol; backend-specific behaviour (open-file caches, hard
links, temporary directories) is tested next to each backend. Backends whose
`reads_are_local` is False pay a round trip per call, so the suite is slower there; a
subclass may shrink `large_blob_bytes`, `stress_duration_s` or `reader_threads`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from petrel.backends.base import Backend
from petrel.errors import BackendError, BlobNotFound, InvalidArgument

MiB = 1024 * 1024

INVALID_NAMES = [
    "",
    "/abs",
    "../x",
    "a/../b",
    "x/..",
    "a//b",
    "a/./b",
    ".",
    "..",
    "a/",
    "/",
    "a b",
    "a\\b",
    "caf\u00e9",
    "a\x00b",
    "a\nb",
    "a\n",
]
# Odd but valid: dots and dashes are name characters; only "." and ".." are special.
ODD_VALID_NAMES = ["a", "-x", "_", "...", "a..b", ".hidden", "x/.y", "A-Z_0.9/z"]


def blob_bytes(seed: int, size: int) -> bytes:
    """Deterministic bytes that differ between seeds at almost every offset."""
    return random.Random(seed).randbytes(size)


class BackendConformance:
    """Subclass and define `make_backend`; every test below then runs on that backend."""

    large_blob_bytes = 8 * MiB
    stress_duration_s = 0.5
    reader_threads = 8

    def make_backend(self, tmp_path: Path) -> Backend:
        raise NotImplementedError("a backend's test class supplies make_backend")

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        made = self.make_backend(tmp_path)
        try:
            yield made
        finally:
            made.close()

    @pytest.fixture
    def scratch(self, tmp_path: Path) -> Path:
        """A local directory for put_file sources and get_file destinations."""
        directory = tmp_path / "scratch"
        directory.mkdir(exist_ok=True)
        return directory

    @staticmethod
    def assert_blob(backend: Backend, name: str, data: bytes, scratch: Path) -> None:
        """Every read path returns exactly `data` for `name`."""
        assert backend.size(name) == len(data)
        assert backend.get_range(name, 0, len(data)) == data
        copy = scratch / f"get-{random.getrandbits(64):016x}"
        backend.get_file(name, str(copy))
        assert copy.read_bytes() == data
        copy.unlink()

    @staticmethod
    def assert_missing(backend: Backend, name: str, scratch: Path) -> None:
        with pytest.raises(BlobNotFound):
            backend.get_range(name, 0, 1)
        with pytest.raises(BlobNotFound):
            backend.get_range(name, 0, 0)
        with pytest.raises(BlobNotFound):
            backend.get_file(name, str(scratch / "missing-copy"))
        with pytest.raises(BlobNotFound):
            backend.size(name)

    # ----- the protocol itself ---------------------------------------------------------
    def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(backend.reads_are_local, bool)

    def test_new_backend_is_empty(self, backend: Backend) -> None:
        listed = backend.list()
        assert isinstance(listed, Iterator)
        assert list(listed) == []

    # ----- round trips -----------------------------------------------------------------
    def test_put_bytes_round_trip(self, backend: Backend, scratch: Path) -> None:
        data = blob_bytes(1, 1000)
        backend.put_bytes("segments/0001.seg", data)
        self.assert_blob(backend, "segments/0001.seg", data, scratch)
        assert list(backend.list()) == ["segments/0001.seg"]

    def test_put_file_round_trip(self, backend: Backend, scratch: Path) -> None:
        data = blob_bytes(2, 4097)
        source = scratch / "source"
        source.write_bytes(data)
        backend.put_file("objects/42", str(source))
        self.assert_blob(backend, "objects/42", data, scratch)

    def test_empty_blob(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("empty", b"")
        self.assert_blob(backend, "empty", b"", scratch)
        assert list(backend.list()) == ["empty"]
        with pytest.raises(InvalidArgument):
            backend.get_range("empty", 0, 1)
        with pytest.raises(InvalidArgument):
            backend.get_range("empty", 1, 0)

    @pytest.mark.parametrize("name", ODD_VALID_NAMES)
    def test_odd_valid_names(self, backend: Backend, scratch: Path, name: str) -> None:
        backend.put_bytes(name, name.encode())
        self.assert_blob(backend, name, name.encode(), scratch)
        assert list(backend.list()) == [name]

    # ----- ranges ----------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("offset", "length"),
        [(0, 1), (0, 1000), (999, 1), (500, 250), (1, 999), (0, 0), (123, 0), (1000, 0)],
    )
    def test_get_range_exact(self, backend: Backend, offset: int, length: int) -> None:
        data = blob_bytes(3, 1000)
        backend.put_bytes("r", data)
        got = backend.get_range("r", offset, length)
        assert isinstance(got, bytes)
        assert got == data[offset : offset + length]
        assert len(got) == length

    @pytest.mark.parametrize(
        ("offset", "length"),
        [(0, 1001), (999, 2), (1000, 1), (1001, 0), (5000, 10), (0, 2**40), (2**62, 1)],
    )
    def test_get_range_past_end(self, backend: Backend, offset: int, length: int) -> None:
        backend.put_bytes("r", blob_bytes(3, 1000))
        with pytest.raises(InvalidArgument):
            backend.get_range("r", offset, length)

    @pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (-5, -5), (10, -1)])
    def test_get_range_negative(self, backend: Backend, offset: int, length: int) -> None:
        backend.put_bytes("r", blob_bytes(3, 1000))
        with pytest.raises(InvalidArgument):
            backend.get_range("r", offset, length)

    # ----- missing blobs ---------------------------------------------------------------
    def test_missing_blob(self, backend: Backend, scratch: Path) -> None:
        self.assert_missing(backend, "never/stored", scratch)
        backend.put_bytes("other", b"x")
        self.assert_missing(backend, "never/stored", scratch)
        self.assert_missing(backend, "othe", scratch)
        self.assert_missing(backend, "other2", scratch)

    def test_name_below_a_blob_is_missing(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("a", b"blob a")
        self.assert_missing(backend, "a/b", scratch)
        backend.delete("a/b")
        self.assert_blob(backend, "a", b"blob a", scratch)

    def test_prefix_of_blobs_is_not_a_blob(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("dir/x", b"x")
        self.assert_missing(backend, "dir", scratch)
        backend.delete("dir")
        self.assert_blob(backend, "dir/x", b"x", scratch)
        assert list(backend.list()) == ["dir/x"]

    # ----- delete ----------------------------------------------------------------------
    def test_delete_removes(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("d/1", b"one")
        backend.put_bytes("d/2", b"two")
        assert backend.get_range("d/1", 0, 3) == b"one"  # warm any read cache first
        backend.delete("d/1")
        self.assert_missing(backend, "d/1", scratch)
        self.assert_blob(backend, "d/2", b"two", scratch)
        assert list(backend.list()) == ["d/2"]

    def test_delete_is_idempotent(self, backend: Backend) -> None:
        backend.delete("never/stored")
        backend.put_bytes("x", b"x")
        backend.delete("x")
        backend.delete("x")
        assert list(backend.list()) == []

    def test_put_after_delete(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("x", b"first")
        assert backend.get_range("x", 0, 5) == b"first"
        backend.delete("x")
        backend.put_bytes("x", b"second!")
        self.assert_blob(backend, "x", b"second!", scratch)

    # ----- replace ---------------------------------------------------------------------
    def test_replace_with_put_bytes(self, backend: Backend, scratch: Path) -> None:
        old, new = blob_bytes(4, 3000), blob_bytes(5, 1234)
        backend.put_bytes("x", old)
        assert backend.get_range("x", 0, 3000) == old  # warm any read cache first
        backend.put_bytes("x", new)
        self.assert_blob(backend, "x", new, scratch)
        with pytest.raises(InvalidArgument):
            backend.get_range("x", 0, 3000)
        assert list(backend.list()) == ["x"]

    def test_replace_with_put_file(self, backend: Backend, scratch: Path) -> None:
        old, new = blob_bytes(6, 100), blob_bytes(7, 5000)
        backend.put_bytes("x", old)
        assert backend.get_range("x", 0, 100) == old
        source = scratch / "new"
        source.write_bytes(new)
        backend.put_file("x", str(source))
        self.assert_blob(backend, "x", new, scratch)
        assert list(backend.list()) == ["x"]

    def test_same_bytes_twice_is_not_an_error(self, backend: Backend, scratch: Path) -> None:
        data = blob_bytes(8, 777)
        source = scratch / "source"
        source.write_bytes(data)
        backend.put_bytes("x", data)
        backend.put_bytes("x", data)
        backend.put_file("y", str(source))
        backend.put_file("y", str(source))
        self.assert_blob(backend, "x", data, scratch)
        self.assert_blob(backend, "y", data, scratch)
        assert list(backend.list()) == ["x", "y"]

    def test_get_file_replaces_destination(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("x", b"short")
        destination = scratch / "destination"
        destination.write_bytes(b"a much longer existing file")
        backend.get_file("x", str(destination))
        assert destination.read_bytes() == b"short"

    # ----- put_file and its source -----------------------------------------------------
    def test_put_file_leaves_source_intact(self, backend: Backend, scratch: Path) -> None:
        data = blob_bytes(9, 10_000)
        source = scratch / "source"
        source.write_bytes(data)
        backend.put_file("x", str(source))
        assert source.read_bytes() == data

    def test_put_file_source_may_be_deleted(self, backend: Backend, scratch: Path) -> None:
        data = blob_bytes(10, 10_000)
        source = scratch / "source"
        source.write_bytes(data)
        backend.put_file("x", str(source))
        source.unlink()
        self.assert_blob(backend, "x", data, scratch)

    def test_put_file_source_path_may_be_reused(self, backend: Backend, scratch: Path) -> None:
        # Renaming a new file over the source path deletes the old one: allowed.
        data = blob_bytes(11, 10_000)
        source = scratch / "source"
        source.write_bytes(data)
        backend.put_file("x", str(source))
        (scratch / "next").write_bytes(b"next spool")
        os.replace(scratch / "next", source)
        self.assert_blob(backend, "x", data, scratch)

    def test_put_file_missing_source(self, backend: Backend, scratch: Path) -> None:
        with pytest.raises(BackendError):
            backend.put_file("x", str(scratch / "no-such-file"))
        self.assert_missing(backend, "x", scratch)
        assert list(backend.list()) == []

    def test_put_file_directory_source(self, backend: Backend, scratch: Path) -> None:
        with pytest.raises(BackendError):
            backend.put_file("x", str(scratch))
        assert list(backend.list()) == []

    def test_failed_put_keeps_old_blob(self, backend: Backend, scratch: Path) -> None:
        backend.put_bytes("x", b"old bytes")
        with pytest.raises(BackendError):
            backend.put_file("x", str(scratch / "no-such-file"))
        self.assert_blob(backend, "x", b"old bytes", scratch)
        assert list(backend.list()) == ["x"]

    # ----- names -----------------------------------------------------------------------
    @pytest.mark.parametrize("name", INVALID_NAMES)
    def test_invalid_names_rejected(self, backend: Backend, scratch: Path, name: str) -> None:
        source = scratch / "source"
        source.write_bytes(b"data")
        calls: list[Callable[[], object]] = [
            lambda: backend.put_bytes(name, b"data"),
            lambda: backend.put_file(name, str(source)),
            lambda: backend.get_range(name, 0, 1),
            lambda: backend.get_file(name, str(scratch / "copy")),
            lambda: backend.size(name),
            lambda: backend.delete(name),
        ]
        for call in calls:
            with pytest.raises(InvalidArgument):
                call()
        assert list(backend.list()) == []
        assert not (scratch / "copy").exists()

    # ----- list ------------------------------------------------------------------------
    def test_list_ascending_byte_order(self, backend: Backend) -> None:
        # '-' < '.' < '/' < '0' < 'A' < '_' < 'a' in bytes; a sort by path component
        # would put "p/a/b" first.
        names = ["p/a-", "p/a.x", "p/a/b", "p/a0", "p/A", "p/_", "p/b", "q", "P", "0", "_z"]
        for name in random.Random(12).sample(names, len(names)):
            backend.put_bytes(name, name.encode())
        assert list(backend.list()) == sorted(names, key=str.encode)

    def test_list_prefix(self, backend: Backend) -> None:
        names = [
            "segments/0001.seg",
            "segments/0002.seg",
            "segmentsX",
            "seg",
            "objects/1",
            "objects/10",
            "objects/2",
            "objects/sub/3",
        ]
        for name in names:
            backend.put_bytes(name, b"x")
        assert list(backend.list("segments/")) == ["segments/0001.seg", "segments/0002.seg"]
        assert list(backend.list("seg")) == [
            "seg",
            "segments/0001.seg",
            "segments/0002.seg",
            "segmentsX",
        ]
        assert list(backend.list("objects/1")) == ["objects/1", "objects/10"]
        assert list(backend.list("objects/s")) == ["objects/sub/3"]
        assert list(backend.list("objects/sub/3")) == ["objects/sub/3"]
        assert list(backend.list("nothing")) == []
        assert list(backend.list("objects/sub/3/")) == []
        assert list(backend.list()) == sorted(names, key=str.encode)
        assert list(backend.list("")) == list(backend.list())

    def test_list_nested(self, backend: Backend) -> None:
        names = ["a/b/c/d/e", "a/b/c/x", "a/y", "z"]
        for name in names:
            backend.put_bytes(name, name.encode())
        assert list(backend.list()) == names
        assert list(backend.list("a/b/")) == ["a/b/c/d/e", "a/b/c/x"]
        backend.delete("a/b/c/d/e")
        assert list(backend.list("a/")) == ["a/b/c/x", "a/y"]

    # ----- large blobs -----------------------------------------------------------------
    def test_large_blob(self, backend: Backend, scratch: Path) -> None:
        size = self.large_blob_bytes
        data = blob_bytes(13, size)
        backend.put_bytes("big/bytes", data)
        source = scratch / "big"
        source.write_bytes(data[::-1])
        backend.put_file("big/file", str(source))
        self.assert_blob(backend, "big/bytes", data, scratch)
        self.assert_blob(backend, "big/file", data[::-1], scratch)
        middle = size // 2
        assert backend.get_range("big/bytes", middle - 7, 4096) == data[middle - 7 : middle + 4089]
        assert backend.get_range("big/bytes", size - 1, 1) == data[-1:]
        with pytest.raises(InvalidArgument):
            backend.get_range("big/bytes", size - 1, 2)

    # ----- thread safety ---------------------------------------------------------------
    def test_concurrent_reads_while_replacing_and_deleting(
        self, backend: Backend, scratch: Path
    ) -> None:
        """Readers get exactly one version's bytes or BlobNotFound, never a mix; and once
        a put or delete returns, the writer's own next read sees it."""
        size, names, versions = 4096, [f"c/{i}" for i in range(4)], 3
        content = {
            (n, v): blob_bytes(1000 * i + v, size)
            for i, n in enumerate(names)
            for v in range(versions)
        }
        for name in names:
            backend.put_bytes(name, content[(name, 0)])
        stop = threading.Event()
        failures: list[str] = []
        reads = [0] * self.reader_threads

        def reader(slot: int) -> None:
            rng = random.Random(slot)
            while not stop.is_set():
                name = rng.choice(names)
                offset = rng.randrange(size)
                length = rng.randint(0, size - offset)
                try:
                    got = backend.get_range(name, offset, length)
                except BlobNotFound:
                    continue
                except Exception as exc:  # noqa: BLE001 - reported below, with its type
                    failures.append(f"{name}: {exc!r}")
                    continue
                reads[slot] += 1
                if not any(
                    got == content[(name, v)][offset : offset + length] for v in range(versions)
                ):
                    failures.append(f"{name} {offset}+{length}: bytes of no version")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(self.reader_threads)]
        for thread in threads:
            thread.start()
        try:
            self._write_concurrently(backend, names, versions, content, scratch, failures)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert sum(reads) > 0

    def _write_concurrently(
        self,
        backend: Backend,
        names: list[str],
        versions: int,
        content: dict[tuple[str, int], bytes],
        scratch: Path,
        failures: list[str],
    ) -> None:
        rng = random.Random(99)
        source = scratch / "source"
        deadline = time.monotonic() + self.stress_duration_s
        writes = 0
        while writes < 20 or time.monotonic() < deadline:
            name, version = rng.choice(names), rng.randrange(versions)
            action = rng.choice(["put_bytes", "put_file", "delete"])
            if action == "put_bytes":
                backend.put_bytes(name, content[(name, version)])
            elif action == "put_file":
                source.write_bytes(content[(name, version)])
                backend.put_file(name, str(source))
                source.unlink()
            else:
                backend.delete(name)
                try:
                    backend.get_range(name, 0, 1)
                    failures.append(f"{name} readable after delete returned")
                except BlobNotFound:
                    pass
            if (
                action != "delete"
                and backend.get_range(name, 0, len(content[(name, version)]))
                != content[(name, version)]
            ):
                failures.append(f"{name} v{version}: stale bytes after {action} returned")
            writes += 1

    def test_concurrent_puts_and_lists(self, backend: Backend, scratch: Path) -> None:
        """Concurrent puts of distinct names all land; `list` never shows anything but
        whole blobs (no temporary or partial names)."""
        writers, per_writer, size = 4, 10, 2048
        expected = {
            f"w{w}/{i:03d}": blob_bytes(w * 100 + i, size)
            for w in range(writers)
            for i in range(per_writer)
        }
        done = threading.Event()
        failures: list[str] = []

        def writer(w: int) -> None:
            try:
                for i in range(per_writer):
                    backend.put_bytes(f"w{w}/{i:03d}", expected[f"w{w}/{i:03d}"])
            except Exception as exc:  # noqa: BLE001 - reported below, with its type
                failures.append(repr(exc))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        while not done.is_set():
            done_now = not any(thread.is_alive() for thread in threads)
            for name in backend.list():
                if name not in expected:
                    failures.append(f"listed {name!r}, never put")
                elif backend.get_range(name, 0, size) != expected[name]:
                    failures.append(f"listed {name} before it was whole")
            if done_now:
                done.set()
        for thread in threads:
            thread.join()
        assert failures == []
        assert list(backend.list()) == sorted(expected)
        for name, data in expected.items():
            assert backend.get_range(name, 0, size) == data

    # ----- close -----------------------------------------------------------------------
    def test_close_is_idempotent(self, backend: Backend) -> None:
        backend.put_bytes("x", b"x")
        assert backend.get_range("x", 0, 1) == b"x"
        backend.close()
        backend.close()
