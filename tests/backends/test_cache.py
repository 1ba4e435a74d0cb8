"""CachedBackend: the conformance suite over it (a cache must not change what a backend
promises: replaced and deleted blobs are never served stale, reads never mix versions),
and the cache itself: bounded in bytes, LRU, counted, one inner read per missing run."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conformance")

from conformance import BackendConformance, blob_bytes  # noqa: E402

from petrel.backends.base import Backend  # noqa: E402
from petrel.backends.cache import CachedBackend  # noqa: E402
from petrel.backends.local import LocalBackend  # noqa: E402
from petrel.errors import BackendError, BlobNotFound, InvalidArgument  # noqa: E402

BLOCK = 4096


class TestCachedBackendConformance(BackendConformance):
    """Every blob cached, in small blocks, so reads span several of them."""

    large_blob_bytes = 1024 * 1024

    def make_backend(self, tmp_path: Path) -> Backend:
        return CachedBackend(LocalBackend(str(tmp_path / "blobs")), str(tmp_path / "cache"),
                             bytes_max=64 * BLOCK, block_bytes=BLOCK, prefixes=("",))


class CountingBackend(LocalBackend):
    """A real local backend that records the ranged reads it serves."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, int, int]] = []

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.reads.append((name, offset, length))
        return super().get_range(name, offset, length)


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[CountingBackend]:
    backend = CountingBackend(str(tmp_path / "blobs"))
    yield backend
    backend.close()


def cache_over(inner: Backend, tmp_path: Path, blocks_max: int) -> CachedBackend:
    return CachedBackend(inner, str(tmp_path / "cache"), bytes_max=blocks_max * BLOCK,
                         block_bytes=BLOCK)


def test_hits_misses_and_one_read_per_missing_run(inner: CountingBackend,
                                                  tmp_path: Path) -> None:
    data = blob_bytes(1, 10 * BLOCK + 100)
    inner.put_bytes("segments/1", data)
    cache = cache_over(inner, tmp_path, 100)
    assert cache.get_range("segments/1", BLOCK + 10, 50) == data[BLOCK + 10 : BLOCK + 60]
    assert inner.reads == [("segments/1", BLOCK, BLOCK)]  # the whole block
    assert cache.get_range("segments/1", BLOCK, BLOCK) == data[BLOCK : 2 * BLOCK]
    assert len(inner.reads) == 1
    # Blocks 0..5 with 1 cached: two runs missing (0, and 2..5): two reads.
    assert cache.get_range("segments/1", 0, 6 * BLOCK) == data[: 6 * BLOCK]
    assert inner.reads[1:] == [("segments/1", 0, BLOCK), ("segments/1", 2 * BLOCK, 4 * BLOCK)]
    # The short last block: read up to the blob's end, not past it.
    assert cache.get_range("segments/1", 10 * BLOCK, 100) == data[10 * BLOCK :]
    assert inner.reads[-1] == ("segments/1", 10 * BLOCK, 100)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.fetches) == (2, 7, 4)
    assert stats.bytes_fetched == 6 * BLOCK + 100
    assert stats.bytes_cached == 6 * BLOCK + 100 and stats.blocks_cached == 7


def test_bounded_in_bytes_least_recently_used_first(inner: CountingBackend,
                                                   tmp_path: Path) -> None:
    data = blob_bytes(2, 8 * BLOCK)
    inner.put_bytes("segments/1", data)
    cache = cache_over(inner, tmp_path, 4)
    for block in range(4):
        cache.get_range("segments/1", block * BLOCK, 1)
    cache.get_range("segments/1", 0, 1)  # block 0 is now the most recently used
    cache.get_range("segments/1", 4 * BLOCK, 1)  # evicts block 1, the least recent
    stats = cache.stats()
    assert stats.evictions == 1 and stats.bytes_cached == 4 * BLOCK
    reads = len(inner.reads)
    cache.get_range("segments/1", 0, 1)
    assert len(inner.reads) == reads  # still cached
    cache.get_range("segments/1", BLOCK, 1)
    assert len(inner.reads) == reads + 1  # evicted: fetched again
    for block in range(8):
        assert cache.get_range("segments/1", block * BLOCK, BLOCK) == \
            data[block * BLOCK : (block + 1) * BLOCK]
        files = [f for _, _, fs in os.walk(tmp_path / "cache") for f in fs]
        assert len(files) <= 4
        assert cache.stats().bytes_cached <= 4 * BLOCK


def _nowait_works(directory: Path) -> bool:
    """Whether the filesystem under `directory` takes RWF_NOWAIT reads (tmpfs does not:
    read_cached then always answers None, and reads go to get_range)."""
    probe = directory / "nowait-probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


def test_read_cached_serves_only_whole_cached_ranges(inner: CountingBackend,
                                                     tmp_path: Path) -> None:
    # The store's event loop reads a warm cache with read_cached, never waiting: the
    # bytes when every block of the range is cached (counted as hits, no inner read),
    # None when any is not, when the blob's size is not known yet, past its end, for
    # names not cached at all, and after a write or delete of the blob.
    data = blob_bytes(3, 6 * BLOCK + 10)
    inner.put_bytes("segments/1", data)
    inner.put_bytes("objects/big", data)
    cache = cache_over(inner, tmp_path, 100)
    if not _nowait_works(tmp_path):
        pytest.skip("this filesystem refuses RWF_NOWAIT: read_cached always answers None")
    assert cache.read_cached("segments/1", 0, 10) is None  # nothing cached, size unknown
    cache.get_range("segments/1", BLOCK, 2 * BLOCK)  # blocks 1 and 2
    reads, hits = len(inner.reads), cache.stats().hits
    assert cache.read_cached("segments/1", BLOCK + 5, 100) == data[BLOCK + 5 : BLOCK + 105]
    assert cache.read_cached("segments/1", BLOCK, 2 * BLOCK) == data[BLOCK : 3 * BLOCK]
    assert cache.read_cached("segments/1", 2 * BLOCK - 7, 20) == \
        data[2 * BLOCK - 7 : 2 * BLOCK + 13]  # across two cached blocks
    assert cache.stats().hits == hits + 1 + 2 + 2
    for offset, length in ((BLOCK - 1, 2), (3 * BLOCK - 1, 2), (0, 1), (6 * BLOCK, 10)):
        assert cache.read_cached("segments/1", offset, length) is None  # a block missing
    cache.get_range("segments/1", 6 * BLOCK, 10)
    assert cache.read_cached("segments/1", 6 * BLOCK, 10) == data[6 * BLOCK :]
    assert cache.read_cached("segments/1", 6 * BLOCK, 11) is None  # past the end
    assert cache.read_cached("segments/1", BLOCK, 0) is None
    assert len(inner.reads) == reads + 1  # read_cached never reads the inner backend
    cache.get_range("objects/big", 0, 10)
    assert cache.read_cached("objects/big", 0, 10) is None  # not a cached name
    cache.put_bytes("segments/1", b"new" * BLOCK)
    assert cache.read_cached("segments/1", BLOCK + 5, 100) is None
    assert cache.get_range("segments/1", 0, 6) == b"newnew"
    assert cache.read_cached("segments/1", 3, 3) == b"new"
    cache.delete("segments/1")
    assert cache.read_cached("segments/1", 3, 3) is None


def test_read_cached_misses_a_block_evicted_under_it(inner: CountingBackend,
                                                     tmp_path: Path) -> None:
    data = blob_bytes(4, 4 * BLOCK)
    inner.put_bytes("segments/1", data)
    cache = cache_over(inner, tmp_path, 2)
    if not _nowait_works(tmp_path):
        pytest.skip("this filesystem refuses RWF_NOWAIT: read_cached always answers None")
    cache.get_range("segments/1", 0, 2 * BLOCK)
    assert cache.read_cached("segments/1", 0, 10) == data[:10]
    cache.get_range("segments/1", 2 * BLOCK, 2 * BLOCK)  # evicts blocks 0 and 1
    assert cache.read_cached("segments/1", 0, 10) is None
    assert cache.read_cached("segments/1", 3 * BLOCK, 10) == data[3 * BLOCK : 3 * BLOCK + 10]


def test_other_names_pass_through(inner: CountingBackend, tmp_path: Path) -> None:
    inner.put_bytes("objects/big", b"x" * 3 * BLOCK)
    cache = cache_over(inner, tmp_path, 10)
    cache.get_range("objects/big", 5, 10)
    cache.get_range("objects/big", 5, 10)
    assert inner.reads == [("objects/big", 5, 10)] * 2
    assert cache.stats().blocks_cached == 0


def test_writes_and_deletes_drop_cached_blocks(inner: CountingBackend, tmp_path: Path
                                               ) -> None:
    cache = cache_over(inner, tmp_path, 10)
    cache.put_bytes("segments/1", b"a" * BLOCK)
    assert cache.get_range("segments/1", 0, 4) == b"aaaa"
    cache.put_bytes("segments/1", b"b" * 2 * BLOCK)
    assert cache.get_range("segments/1", 0, 4) == b"bbbb"
    assert cache.get_range("segments/1", BLOCK, 4) == b"bbbb"  # the size is new too
    cache.delete("segments/1")
    with pytest.raises(BlobNotFound):
        cache.get_range("segments/1", 0, 4)
    assert cache.stats().blocks_cached == 0


def test_ranges_are_checked_against_the_blob(inner: CountingBackend, tmp_path: Path) -> None:
    inner.put_bytes("segments/1", b"z" * 100)
    cache = cache_over(inner, tmp_path, 10)
    with pytest.raises(InvalidArgument):
        cache.get_range("segments/1", 50, 51)
    with pytest.raises(InvalidArgument):
        cache.get_range("segments/1", -1, 5)
    with pytest.raises(InvalidArgument):
        cache.get_range("../x", 0, 1)


def test_directory_is_emptied_on_open(inner: CountingBackend, tmp_path: Path) -> None:
    inner.put_bytes("segments/1", b"q" * BLOCK)
    cache = cache_over(inner, tmp_path, 10)
    cache.get_range("segments/1", 0, 1)
    again = cache_over(inner, tmp_path, 10)
    assert [f for _, _, fs in os.walk(tmp_path / "cache") for f in fs] == []
    assert again.stats().blocks_cached == 0


def test_settings_are_checked(inner: CountingBackend, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CachedBackend(inner, str(tmp_path / "c"), bytes_max=BLOCK, block_bytes=1024)
    with pytest.raises(ValueError):
        CachedBackend(inner, str(tmp_path / "c"), bytes_max=BLOCK - 1, block_bytes=BLOCK)


class SlowBackend(CountingBackend):
    """Holds every ranged read until released, so readers overlap for certain."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        assert self.release.wait(10)
        return super().get_range(name, offset, length)


def test_concurrent_readers_of_a_block_fetch_it_once(tmp_path: Path) -> None:
    inner = SlowBackend(str(tmp_path / "blobs"))
    data = blob_bytes(3, 4 * BLOCK)
    inner.put_bytes("segments/3", data)
    cache = cache_over(inner, tmp_path, 100)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get_range, "segments/3", BLOCK + 100 * i, 50)
                   for i in range(8)]
        time.sleep(0.2)  # every reader is waiting on the one fetch by now
        inner.release.set()
        got = [f.result(timeout=10) for f in futures]
    assert got == [data[BLOCK + 100 * i : BLOCK + 100 * i + 50] for i in range(8)]
    assert inner.reads == [("segments/3", BLOCK, BLOCK)]  # one fetch for eight readers
    inner.close()


def test_a_failed_fetch_leaves_waiters_to_read_for_themselves(tmp_path: Path) -> None:
    class FailOnce(CountingBackend):
        failed = False

        def get_range(self, name: str, offset: int, length: int) -> bytes:
            if not FailOnce.failed:
                FailOnce.failed = True
                time.sleep(0.2)
                raise BackendError("the store is down")
            return super().get_range(name, offset, length)

    inner = FailOnce(str(tmp_path / "blobs"))
    data = blob_bytes(4, 2 * BLOCK)
    inner.put_bytes("segments/4", data)
    cache = cache_over(inner, tmp_path, 100)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get_range, "segments/4", 10, 20)
        time.sleep(0.05)
        second = pool.submit(cache.get_range, "segments/4", 40, 20)
        with pytest.raises(BackendError):
            first.result(timeout=10)
        assert second.result(timeout=10) == data[40:60]
    inner.close()
