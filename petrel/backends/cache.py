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
import hashlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from petrel.backends.base import Backend, check_blob_name
from petrel.errors import InvalidArgument

# Blob sizes remembered (one HEAD per blob otherwise), at most.
_SIZES_MAX = 100_000


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int  # blocks served from disk
    misses: int  # blocks fetched from the inner backend
    fetches: int  # ranged reads sent to the inner backend for misses
    bytes_fetched: int
    evictions: int
    bytes_cached: int
    blocks_cached: int


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
        self._bytes = 0
        self._hits = self._misses = self._fetches = self._fetched = self._evictions = 0

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
        blocks = self._read_blocks(name, first, last, size, invalidations)
        with self._lock:
            changed = invalidations != self._invalidations
        if changed:
            return self.inner.get_range(name, offset, length)
        data = b"".join(blocks)
        start = offset - first * self.block_bytes
        return data[start : start + length]

    def _read_blocks(self, name: str, first: int, last: int, size: int,
                     invalidations: int) -> list[bytes]:
        """Blocks first..last of `name`: cached ones from disk, each run of missing
        ones fetched with one ranged read (and stored)."""
        found: dict[int, bytes] = {}
        for index in range(first, last + 1):
            data = self._load(name, index)
            if data is not None:
                found[index] = data
        index = first
        while index <= last:
            if index in found:
                index += 1
                continue
            run_end = index
            while run_end + 1 <= last and run_end + 1 not in found:
                run_end += 1
            start = index * self.block_bytes
            end = min((run_end + 1) * self.block_bytes, size)
            fetched = self.inner.get_range(name, start, end - start)
            with self._lock:
                self._misses += run_end - index + 1
                self._fetches += 1
                self._fetched += len(fetched)
            for block in range(index, run_end + 1):
                offset = (block - index) * self.block_bytes
                found[block] = fetched[offset : offset + self.block_bytes]
                self._store(name, block, found[block], invalidations)
            index = run_end + 1
        return [found[i] for i in range(first, last + 1)]

    def _path(self, name: str, index: int) -> str:
        digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
        return os.path.join(self.directory, digest[:2], f"{digest}.{index}")

    def _load(self, name: str, index: int) -> bytes | None:
        key = (name, index)
        with self._lock:
            if key not in self._blocks:
                return None
            self._blocks.move_to_end(key)
        try:
            with open(self._path(name, index), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:  # evicted between the lookup and the open
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
