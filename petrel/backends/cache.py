"""An on-disk LRU cache of blob ranges, as a layer above any backend.

`CachedBackend(inner, ...)` is itself a Backend. Reads of blobs whose names start with
one of `prefixes` (sealed segments, by default) go through fixed-size blocks kept as
files under `directory`: a read takes the blocks it covers from disk, fetches the
missing ones in one ranged read per contiguous run, and stores them. The cache holds at
most `bytes_max` bytes of blocks; the least recently used go first. Hits, misses and
bytes fetched are counted (`stats()`), as fsspec's caches count theirs.

Blocks are only ever a copy of what the inner backend holds: writes and deletes through
this layer drop the name's blocks, and a read that overlaps such a change is answered by
the inner backend directly, so a read never mixes two versions of a blob. The directory
is emptied on open: nothing cached survives a restart, so a block torn by a crash is
never served. (Records carry their own checksums, checked by the store on every read.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from petrel.backends.base import Backend, check_blob_name
from petrel.errors import InvalidArgument
from petrel.segments import NowaitReads

# Blob sizes remembered (one HEAD per blob otherwise), at most.
_SIZES_MAX = 100_000


# How long a reader waits for another thread's fetch of the same block before reading
# the range itself (a fetch normally takes milliseconds).
_INFLIGHT_WAIT_S = 60.0
_DONE = threading.Event()
_DONE.set()


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int  # blocks served from disk
    misses: int  # blocks fetched from the inner backend
    fetches: int  # ranged reads sent to the inner backend for misses
    bytes_fetched: int
    evictions: int
    bytes_cached: int
    blocks_cached: int


def block_path(directory: str, name: str, index: int) -> str:
    """Where block `index` of blob `name` is kept. A block file appears whole (written
    aside, then renamed) and is never rewritten, only deleted: reader processes
    (petrel.replica) read the cache through these paths."""
    return os.path.join(directory, f"{_blob_dir(name)}.{index}")


@functools.lru_cache(maxsize=_SIZES_MAX)
def _blob_dir(name: str) -> str:
    """"xx/<digest>" for blob `name`: the part of its blocks' paths that every read of
    them (one per record on a warm read) would otherwise hash again."""
    digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    return f"{digest[:2]}/{digest}"


def block_indexes(block_bytes: int, offset: int, length: int) -> range:
    """The blocks bytes [offset, offset + length) of a blob fall in (length > 0)."""
    return range(offset // block_bytes, (offset + length - 1) // block_bytes + 1)


def block_span(block_bytes: int, index: int, offset: int, length: int) -> tuple[int, int]:
    """The part of block `index`, relative to its start, that bytes [offset,
    offset + length) of the blob cover."""
    base = index * block_bytes
    return max(offset, base) - base, min(offset + length, base + block_bytes) - base


def read_blocks_nowait(nowait: NowaitReads, directory: str, block_bytes: int, name: str,
                       offset: int, length: int) -> bytearray | None:
    """Bytes [offset, offset + length) of blob `name` from its block files under
    `directory`, read into one buffer without waiting for the disk; None if a read
    would wait. Raises FileNotFoundError for a block file that is not there."""
    buffer = bytearray(length)
    view = memoryview(buffer)
    at = 0
    for index in block_indexes(block_bytes, offset, length):
        start, end = block_span(block_bytes, index, offset, length)
        fd = os.open(block_path(directory, name, index), os.O_RDONLY)
        try:
            if not nowait.read(fd, view[at : at + end - start], start):
                return None
        finally:
            os.close(fd)
        at += end - start
    return buffer


class CachedBackend:
    """`inner`, with reads of blobs under `prefixes` cached on disk in blocks of
    `block_bytes`, at most `bytes_max` bytes in all (LRU)."""

    def __init__(self, inner: Backend, directory: str, *, bytes_max: int,
                 block_bytes: int = 1024 * 1024, prefixes: tuple[str, ...] = ("segments/",)
                 ) -> None:
        if block_bytes < 4096 or bytes_max < block_bytes:
            raise ValueError("block_bytes must be >= 4096 and bytes_max >= block_bytes")
        self.inner = inner
        self.directory = directory
        self.bytes_max = bytes_max
        self.block_bytes = block_bytes
        self.prefixes = prefixes
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        self._lock = threading.Lock()
        # (name, block index) -> block size in bytes; oldest first.
        self._blocks: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        # Bumped by every write or delete: a read that saw it change mid-way may hold
        # blocks of two versions, and is answered by the inner backend instead.
        self._invalidations = 0
        # Blocks being fetched now, by the thread that claimed them: another reader of
        # the same block waits for that fetch instead of fetching it again (a cold pass
        # of many concurrent batches would otherwise fetch each block many times).
        self._inflight: dict[tuple[str, int], threading.Event] = {}
        self._bytes = 0
        self._hits = self._misses = self._fetches = self._fetched = self._evictions = 0
        self._nowait = NowaitReads("the read cache's blocks")

    @property
    def reads_are_local(self) -> bool:
        return self.inner.reads_are_local

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._fetches, self._fetched,
                              self._evictions, self._bytes, len(self._blocks))

    # ----- reads -------------------------------------------------------------------
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_blob_name(name)
        if length <= 0 or offset < 0 or not name.startswith(self.prefixes):
            return self.inner.get_range(name, offset, length)
        with self._lock:
            invalidations = self._invalidations
        size = self._size(name)
        if offset + length > size:
            raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
        first, last = offset // self.block_bytes, (offset + length - 1) // self.block_bytes
        pieces = self._read_blocks(name, first, last, size, invalidations, offset, length)
        with self._lock:
            changed = invalidations != self._invalidations
        if changed:
            return self.inner.get_range(name, offset, length)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_cached(self, name: str, offset: int, length: int) -> bytearray | bytes | None:
        """The bytes if every block they fall in is cached and its pages are in the
        page cache: read on the caller's thread, never waiting for the disk
        (RWF_NOWAIT) or the network; None otherwise, and the caller reads them with
        `get_range` in a worker thread. The store's event loop serves warm reads this
        way, without a thread hop per read (a warm batch get runs as fast as one over
        the local backend's files, which are read the same way)."""
        if not self._nowait.on or length <= 0 or not name.startswith(self.prefixes):
            return None
        first, last = offset // self.block_bytes, (offset + length - 1) // self.block_bytes
        with self._lock:
            size = self._sizes.get(name)
            if size is None or offset + length > size:
                return None
            for index in range(first, last + 1):
                if (name, index) not in self._blocks:
                    return None
            for index in range(first, last + 1):
                self._blocks.move_to_end((name, index))
            invalidations = self._invalidations
        try:
            data = read_blocks_nowait(self._nowait, self.directory, self.block_bytes, name,
                                      offset, length)
        except FileNotFoundError:  # evicted since the lookup
            return None
        if data is None:
            return None
        with self._lock:
            if invalidations != self._invalidations:  # a write or delete of it meanwhile
                return None
            self._hits += last - first + 1
        return data

    def touch(self, blocks: list[tuple[str, int]], hits: int) -> None:
        """Blocks another process read from this cache's files (a gateway reader
        process): most recently used now, and `hits` counted."""
        with self._lock:
            for key in blocks:
                if key in self._blocks:
                    self._blocks.move_to_end(key)
            self._hits += hits

    def _span(self, index: int, offset: int, length: int) -> tuple[int, int]:
        return block_span(self.block_bytes, index, offset, length)

    def _read_blocks(self, name: str, first: int, last: int, size: int,
                     invalidations: int, offset: int, length: int) -> list[bytes]:
        """The parts of blocks first..last that [offset, offset + length) covers: from
        the cached block files (only the bytes wanted are read), each run of missing
        blocks fetched whole with one ranged read (and stored)."""
        def wanted(index: int) -> tuple[int, int]:
            return self._span(index, offset, length)

        found: dict[int, bytes] = {}
        for index in range(first, last + 1):
            data = self._load(name, index, *wanted(index))
            if data is not None:
                found[index] = data
        mine: list[int] = []
        theirs: dict[int, threading.Event] = {}
        with self._lock:
            for index in range(first, last + 1):
                if index in found:
                    continue
                if (name, index) in self._blocks:  # stored since the pass above
                    theirs[index] = _DONE
                    continue
                event = self._inflight.get((name, index))
                if event is None:
                    self._inflight[(name, index)] = threading.Event()
                    mine.append(index)
                else:
                    theirs[index] = event
        try:
            self._fetch_runs(name, mine, size, invalidations, wanted, found)
        finally:
            with self._lock:
                for index in mine:
                    self._inflight.pop((name, index)).set()
        for index, event in theirs.items():
            event.wait(_INFLIGHT_WAIT_S)
            data = self._load(name, index, *wanted(index))
            if data is None:  # that fetch failed (or the block is gone): read it here
                lo, hi = wanted(index)
                data = self.inner.get_range(name, index * self.block_bytes + lo, hi - lo)
            found[index] = data
        return [found[i] for i in range(first, last + 1)]

    def _fetch_runs(self, name: str, blocks: list[int], size: int, invalidations: int,
                    wanted: Callable[[int], tuple[int, int]], found: dict[int, bytes]
                    ) -> None:
        """Fetch `blocks` (ascending), each contiguous run with one ranged read; store
        them and put the wanted part of each in `found`."""
        position = 0
        while position < len(blocks):
            run_start = run_end = blocks[position]
            while position + 1 < len(blocks) and blocks[position + 1] == run_end + 1:
                position += 1
                run_end += 1
            position += 1
            start = run_start * self.block_bytes
            end = min((run_end + 1) * self.block_bytes, size)
            fetched = self.inner.get_range(name, start, end - start)
            with self._lock:
                self._misses += run_end - run_start + 1
                self._fetches += 1
                self._fetched += len(fetched)
            for block in range(run_start, run_end + 1):
                at = (block - run_start) * self.block_bytes
                whole = fetched[at : at + self.block_bytes]
                self._store(name, block, whole, invalidations)
                lo, hi = wanted(block)
                found[block] = whole[lo:hi]

    def _path(self, name: str, index: int) -> str:
        return block_path(self.directory, name, index)

    def _load(self, name: str, index: int, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of cached block `index`, or None if it is not cached."""
        key = (name, index)
        with self._lock:
            if key not in self._blocks:
                return None
            self._blocks.move_to_end(key)
        try:
            fd = os.open(self._path(name, index), os.O_RDONLY)
        except FileNotFoundError:  # evicted between the lookup and the open
            return None
        try:
            data = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        if len(data) != end - start:  # a block file cut short: fetch it again
            return None
        with self._lock:
            self._hits += 1
        return data

    def _store(self, name: str, index: int, data: bytes, invalidations: int) -> None:
        path = self._path(name, index)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
        evicted: list[str] = []
        with self._lock:
            if invalidations != self._invalidations or (name, index) in self._blocks:
                os.unlink(tmp)  # stale, or stored meanwhile by another reader
                return
            os.replace(tmp, path)
            self._blocks[(name, index)] = len(data)
            self._bytes += len(data)
            while self._bytes > self.bytes_max:
                (old_name, old_index), old_size = self._blocks.popitem(last=False)
                self._bytes -= old_size
                self._evictions += 1
                evicted.append(self._path(old_name, old_index))
        for old in evicted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)

    def _size(self, name: str) -> int:
        with self._lock:
            size = self._sizes.get(name)
            if size is not None:
                self._sizes.move_to_end(name)
                return size
            invalidations = self._invalidations
        size = self.inner.size(name)
        with self._lock:
            if invalidations == self._invalidations:
                self._sizes[name] = size
                while len(self._sizes) > _SIZES_MAX:
                    self._sizes.popitem(last=False)
        return size

    def _invalidate(self, name: str) -> None:
        """Forget `name`'s blocks and size (after a write or delete of it)."""
        if not name.startswith(self.prefixes):
            return
        with self._lock:
            self._invalidations += 1
            self._sizes.pop(name, None)
            doomed = [key for key in self._blocks if key[0] == name]
            for key in doomed:
                self._bytes -= self._blocks.pop(key)
        for _, index in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name, index))

    # ----- everything else: the inner backend, invalidating what it changes --------
    def put_file(self, name: str, path: str) -> None:
        try:
            self.inner.put_file(name, path)
        finally:
            self._invalidate(name)

    def put_bytes(self, name: str, data: bytes) -> None:
        try:
            self.inner.put_bytes(name, data)
        finally:
            self._invalidate(name)

    def delete(self, name: str) -> None:
        try:
            self.inner.delete(name)
        finally:
            self._invalidate(name)

    def get_file(self, name: str, path: str) -> None:
        self.inner.get_file(name, path)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()
