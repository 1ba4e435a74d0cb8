"""A read-only view of a store that another process owns: what the gateway's reader
processes (petrel_gateway.worker) answer GETs and HEADs from.

One process, the primary, opens the store and makes every write. A reader opens the
index as a RocksDB *secondary* instance and reads records straight from the segment
files on local disk, or from the primary's read-cache block files. S3 promises
read-after-write, so before each lookup a reader asks the shared `Generation` whether
a key it is about to read was written since its last catch-up; if so, it catches up
with the primary (1-6 ms: RocksDB re-reads the MANIFEST and the WAL) and reloads the
bucket rows. A write is acknowledged only after its keys are marked, so a read that
starts after the acknowledgement sees it.

What a reader cannot answer, it does not guess: a record in neither a local segment
file nor the read cache, a large object, or an index catch-up that fails raise
`NotServedHere`, and the gateway hands the request to the primary.

A reader also takes small PUTs: it checks them (`check_put`) and passes the object to
the primary to store (`put_object`, over petrel_gateway.writes), answering only once
the primary has.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash

from petrel import format as fmt
from petrel import index as ix
from petrel.backends.cache import block_indexes, block_path, block_span, read_blocks_nowait
from petrel.batchread import Lookup, look_up_whole
from petrel.errors import (
    CorruptionError,
    InvalidArgument,
    NoSuchKey,
    NotServedHere,
    SlowDown,
)
from petrel.model import ByteRange, GetItem, ObjectData, ObjectInfo, resolve_range
from petrel.recovery import index_dir, segment_dir
from petrel.segments import NowaitReads, SealedFiles, local_segment_path
from petrel.settings import StoreConfig
from petrel.store import Located, ObjectStream, bucket_row, check_key, check_meta, one_chunk

log = logging.getLogger("petrel.replica")

_GENERATION = struct.Struct("<Q")
# Slots of the generation file (8 bytes each, 8 MiB in all): with a few thousand writes
# a second, a reader that reads keys nobody writes catches up about once a second.
_SLOTS = 1 << 20
_SLOT_MASK = _SLOTS - 1
_SLOTS_AT = _GENERATION.size
_GENERATION_FILE_BYTES = _SLOTS_AT + _SLOTS * _GENERATION.size
_slot_hash = xxhash.xxh3_64_intdigest


def replica_dir(data_dir: str) -> str:
    """Where the generation file and the readers' secondary index files live; the
    primary empties it when it starts."""
    return os.path.join(data_dir, "replicas")


class Generation:
    """What the primary has written, shared through a file with reader processes: a
    counter bumped after every index write, and for each of `_SLOTS` slots (index keys
    hashed into them) the counter's value at the last write of a key of that slot.

    A reader that caught up at generation G has every write bumped up to G. A key
    whose slot still holds at most G was not written since: the reader's view of it is
    current without catching up again (about 1-6 ms, growing with the primary's
    unflushed WAL). A key whose slot moved may have been: the reader catches up. Keys
    that share a slot cost a needless catch-up, never a stale answer. The primary
    marks the slots and then bumps the counter, after the index write and before the
    write is acknowledged.
    """

    def __init__(self, path: str, *, create: bool) -> None:
        if create:
            with open(path, "wb") as file:
                file.truncate(_GENERATION_FILE_BYTES)
        fd = os.open(path, os.O_RDWR if create else os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, _GENERATION_FILE_BYTES,
                                  access=mmap.ACCESS_WRITE if create else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._value = _GENERATION.unpack_from(self._map, 0)[0]

    def bump(self, keys: Sequence[bytes] = ()) -> None:
        """The primary: `keys` were just written."""
        value = self._value + 1
        pack_into, table, hash_of = _GENERATION.pack_into, self._map, _slot_hash
        for key in keys:
            pack_into(table, _SLOTS_AT + (hash_of(key) & _SLOT_MASK) * 8, value)
        self._value = value
        pack_into(table, 0, value)

    def value(self) -> int:
        value: int = _GENERATION.unpack_from(self._map, 0)[0]
        return value

    def written_since(self, key: bytes, generation: int) -> bool:
        """Whether `key` may have been written after `generation`."""
        at = _SLOTS_AT + (_slot_hash(key) & _SLOT_MASK) * 8
        slot: int = _GENERATION.unpack_from(self._map, at)[0]
        return slot > generation

    def close(self) -> None:
        self._map.close()


@dataclass(slots=True)
class _Rows:
    """The index rows a reader keeps in memory (as the primary's Applier does)."""

    buckets: dict[str, fmt.BucketRow]


class _Segments:
    """Where a reader finds a segment's bytes: its file on local disk (the active and
    unsealed segments, and every sealed one of the local backend), else, with a remote
    backend, the blocks of it the primary's read cache holds (petrel.backends.cache:
    whole files, renamed into place, never rewritten). A byte range found in neither
    raises NotServedHere: the primary fetches it. `get_range` is also the "backend"
    petrel.batchread reads through in worker threads."""

    def __init__(self, files: SealedFiles, cache_dir: str | None, block_bytes: int,
                 nowait: NowaitReads) -> None:
        self._files = files
        self._cache_dir = cache_dir
        self._block_bytes = block_bytes
        self._nowait = nowait
        # Segments with no local file: once uploaded and dropped, one never comes back.
        self._remote: set[int] = set()
        # Cache blocks read since `take_touched`, for the primary's LRU and hit count.
        self._touched: set[tuple[str, int]] = set()
        self._hits = 0

    def take_touched(self) -> tuple[list[tuple[str, int]], int]:
        """(blocks read, blocks read in all) since the last call."""
        touched, self._touched = self._touched, set()
        hits, self._hits = self._hits, 0
        return list(touched), hits

    def _local(self, segment_id: int) -> BinaryIO | None:
        if segment_id in self._remote:
            return None
        try:
            return self._files.file(segment_id)
        except FileNotFoundError:
            if self._cache_dir is None:
                raise NotServedHere("a segment that is not a local file") from None
            self._remote.add(segment_id)
            return None

    def readable(self, segment_id: int) -> None:
        """Raises NotServedHere unless the segment is a local file or may be cached."""
        self._local(segment_id)

    def _read_from(self, name: str, offset: int, length: int) -> None:
        """Count blocks [offset, offset + length) of `name` as read from the cache."""
        for index in block_indexes(self._block_bytes, offset, length):
            self._touched.add((name, index))
            self._hits += 1

    def _block_file(self, name: str, index: int) -> str:
        assert self._cache_dir is not None
        return block_path(self._cache_dir, name, index)

    def read_now(self, segment_id: int, offset: int, length: int) -> bytearray | None:
        """The bytes if the page cache holds them all; None if reading them would wait
        for the disk (read them with `get_range` in a thread). Raises NotServedHere."""
        handle = self._local(segment_id)
        if handle is not None:
            return self._files.read_cached(segment_id, offset, length)
        if not self._nowait.on:
            return None
        assert self._cache_dir is not None
        name = fmt.segment_blob_name(segment_id)
        try:
            data = read_blocks_nowait(self._nowait, self._cache_dir, self._block_bytes,
                                      name, offset, length)
        except FileNotFoundError:
            raise NotServedHere("a block the read cache does not hold") from None
        if data is not None:
            self._read_from(name, offset, length)
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        segment_id = fmt.segment_id_from_blob_name(name)
        assert segment_id is not None
        handle = self._local(segment_id)
        if handle is not None:
            return _pread_exactly(handle.fileno(), offset, length, name)
        pieces = []
        for index in block_indexes(self._block_bytes, offset, length):
            start, end = block_span(self._block_bytes, index, offset, length)
            try:
                fd = os.open(self._block_file(name, index), os.O_RDONLY)
            except FileNotFoundError:
                raise NotServedHere("a block the read cache does not hold") from None
            try:
                pieces.append(_pread_exactly(fd, start, end - start, name))
            finally:
                os.close(fd)
        self._read_from(name, offset, length)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _pread_exactly(fd: int, offset: int, length: int, name: str) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:  # closed under us by an eviction from the handle cache
        raise SlowDown(f"segment read interrupted ({exc}); retry") from exc
    if len(data) != length:
        raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
    return data


@dataclass(frozen=True, slots=True)
class Written:
    """What a write through the primary answers with (as much of ObjectInfo as the
    fast lane reads)."""

    etag: str


class Replica:
    """GET, HEAD and batch get of packed objects, over a store the primary process
    owns. Offers the part of `petrel.store.Store` the gateway's fast lane and
    `petrel.batchread` read through: `limits`, `config`, `kv`, `applier.buckets`,
    `io_pool`, `backend.get_range`, `locate_object`, `read_object_now`,
    `read_object`, and `plan_batch` before a batch read."""

    def __init__(self, config: StoreConfig, secondary_dir: str) -> None:
        self.config = config
        self.limits = config.limits
        data_dir = config.data_dir
        self._generation = Generation(os.path.join(replica_dir(data_dir), "generation"),
                                      create=False)
        os.makedirs(secondary_dir, exist_ok=True)
        self.kv = ix.RocksKV(index_dir(data_dir), cache_bytes=config.index_cache_bytes,
                             secondary=secondary_dir)
        self.index = ix.Index(self.kv)
        self.applier = _Rows({})
        self._seen = -1
        self._segment_dir = segment_dir(data_dir)
        # Sealed segments of the local backend live under <data>/blobs; a remote
        # backend's, once uploaded, in the primary's read cache (or not at all here).
        self._blob_root = os.path.join(data_dir, "blobs") if config.backend is None else None
        cache_dir = os.path.join(data_dir, "cache") \
            if config.backend is not None and config.read_cache_bytes_max else None
        self._files = SealedFiles(self._path_of, config.open_files_max)
        self.backend = self._segments = _Segments(
            self._files, cache_dir, config.read_cache_block_bytes,
            NowaitReads("the read cache"))
        self.io_pool = ThreadPoolExecutor(config.io_threads,
                                          thread_name_prefix="petrel-replica-io")
        self.catch_ups = 0
        self.catch_up_s = 0.0  # time spent in catch-ups (petrel_reader_index_catch_up_*)
        # The write link to the primary (petrel_gateway.writes.WriteClient), once the
        # reader has connected it: anything with an async put_object(bucket, key, data,
        # meta, md5) -> etag.
        self.writes: Any = None
        self.refresh()

    def close(self) -> None:
        self.io_pool.shutdown(wait=True)
        self._files.close()
        self.kv.close()
        self._generation.close()

    # ----- the index ---------------------------------------------------------------
    def refresh(self, *keys: bytes) -> None:
        """Make this view current for the index `keys` (for every key when none are
        given): catch up with the primary if it may have written one of them since the
        last catch-up. Raises NotServedHere if the catch-up fails (the primary answers
        meanwhile)."""
        generation = self._generation.value()
        if generation == self._seen:
            return
        if keys:
            since = self._generation.written_since
            seen = self._seen
            if not any(since(key, seen) for key in keys):
                return
        started = time.perf_counter()
        try:
            self.kv.catch_up()
            self.applier.buckets = {b.name: b.row for b in self.index.buckets()}
        except ix.IndexUnavailable as exc:
            log.warning("%s; the primary answers until a catch-up succeeds", exc)
            raise NotServedHere(str(exc)) from exc
        finally:
            self.catch_up_s += time.perf_counter() - started
        self._seen = generation
        self.catch_ups += 1

    def locate_object(self, bucket: str, key: str) -> Located:
        """As `Store.locate_object`, as of the last acknowledged write. Raises
        NoSuchBucket, NoSuchKey, and NotServedHere for what only the primary reads: a
        large object, or a record in a segment that is not a local file."""
        self.refresh(ix.bucket_key(bucket))
        row = self._bucket(bucket)
        raw_key = key.encode()
        if not raw_key or len(raw_key) > self.limits.key_bytes_max:
            raise NotServedHere("a key the primary refuses")  # with the right error
        index_key = ix.object_key(row.bucket_id, raw_key)
        self.refresh(index_key)
        value = self.kv.get(index_key)
        if value is None:
            raise NoSuchKey(resource=f"{bucket}/{key}")
        entry = fmt.decode_index_value(value)
        if entry.flags & fmt.FLAG_LARGE:
            raise NotServedHere("a large object")
        self._segments.readable(entry.location.segment_id)
        return Located(ObjectInfo.from_entry(bucket, key, entry), entry,
                       bucket.encode() + b"/" + raw_key)

    def _bucket(self, name: str) -> fmt.BucketRow:
        return bucket_row(self.applier.buckets, name)

    # ----- writes, passed to the primary ----------------------------------------------
    def check_put(self, bucket: str, key: str, meta: fmt.ObjectMeta) -> None:
        """As `Store.check_put`, on this view: NoSuchBucket, InvalidArgument,
        KeyTooLongError, MetadataTooLarge. The primary checks again when it stores."""
        self.refresh(ix.bucket_key(bucket))
        self._bucket(bucket)
        check_key(key, self.limits)
        check_meta(meta, self.limits)

    async def put_object(self, bucket: str, key: str, data: bytes,
                         meta: fmt.ObjectMeta = fmt.EMPTY_META) -> Written:
        """Store a packed object through the primary (`writes`, the reader's write
        link): its ETag once the primary has stored it."""
        if self.writes is None:
            raise NotServedHere("no write link to the primary")
        md5 = hashlib.md5(data).digest()
        return Written(await self.writes.put_object(bucket, key, data, meta, md5))

    def _key(self, key: str) -> bytes:
        return check_key(key, self.limits)

    def plan_batch(self, bucket: str, items: Sequence[GetItem]) -> Lookup:
        """The index lookup of a batch get, made before anything is read or sent.
        Raises NoSuchBucket, and NotServedHere for a batch the primary must answer: one
        holding a large object or a record in a segment that is not a local file, or
        one whose records add up to more than batchread.WHOLE_ANSWER_BYTES_MAX
        (answered in one piece here; the primary streams longer answers)."""
        self.refresh(ix.bucket_key(bucket))
        row = self._bucket(bucket)
        prefix = ix.object_prefix(row.bucket_id)
        self.refresh(*(prefix + item.key.encode() for item in items))
        lookup = look_up_whole(self, items)
        # Whether the read cache holds the blocks is found when they are read (a block
        # file that is not there raises NotServedHere before anything is sent), as for a
        # single GET: a check here would cost a stat per record on every warm batch.
        readable = self._segments.readable
        for want in lookup.wants:
            readable(want.entry.location.segment_id)
        return lookup

    async def get_object(self, bucket: str, key: str, byte_range: ByteRange | None = None
                         ) -> ObjectData:
        """Large objects in a batch: refused by plan_batch before any read."""
        raise NotServedHere("a large object")

    # ----- records -----------------------------------------------------------------
    def _read_local(self, location: fmt.Location) -> tuple[bytearray, int] | None:
        """As `Store._read_local`: the bytes when the page cache holds them all."""
        try:
            data = self._segments.read_now(location.segment_id, location.offset,
                                           location.length)
        except FileNotFoundError as exc:  # deleted since the lookup: the index moved on
            raise NotServedHere("a segment deleted since the lookup") from exc
        return None if data is None else (data, 0)

    async def _read_payload(self, entry: fmt.Entry, full_key: bytes) -> bytes:
        location = entry.location
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self.io_pool, self.backend.get_range,
                                          fmt.segment_blob_name(location.segment_id),
                                          location.offset, location.length)
        return self._check_payload(data, 0, location, full_key)

    def _path_of(self, name: str) -> str:
        segment_id = fmt.segment_id_from_blob_name(name)
        assert segment_id is not None
        local = local_segment_path(self._segment_dir, segment_id)
        if self._blob_root is None or os.path.exists(local):
            return local
        return os.path.join(self._blob_root, name)

    def read_object_now(self, located: Located, byte_range: ByteRange | None = None
                        ) -> tuple[bytes, int] | None:
        """As `Store.read_object_now`: (body, start) when the record is in the page
        cache, verified; None when it must be read in a thread (`read_object`)."""
        entry = located.entry
        start, length = resolve_range(byte_range, entry.size)
        local = self._read_local(entry.location)
        if local is None:
            return None
        payload = self._check_payload(local[0], 0, entry.location, located.full_key)
        if start == 0 and length == entry.size:
            return payload, 0
        return payload[start : start + length], start

    async def read_object(self, located: Located, byte_range: ByteRange | None = None
                          ) -> ObjectStream:
        """As `Store.read_object` for a packed object: one read in a worker thread."""
        entry = located.entry
        start, length = resolve_range(byte_range, entry.size)
        payload = await self._read_payload(entry, located.full_key)
        body = payload if start == 0 and length == entry.size else \
            payload[start : start + length]
        return ObjectStream(located.info, start, length, one_chunk(body), body)

    def _check_payload(self, data: bytes | bytearray | mmap.mmap, offset: int,
                       location: fmt.Location, full_key: bytes) -> bytes:
        try:
            return fmt.verified_payload(data, offset, location, full_key)
        except CorruptionError as exc:
            log.error("corrupt record for %r in segment %x at %d: %s", full_key,
                      location.segment_id, location.offset, exc)
            raise CorruptionError(f"stored object failed its integrity check ({exc})",
                                  resource=full_key.decode(errors="replace")) from exc
