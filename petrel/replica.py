"""A read-only view of a store that another process owns: what the gateway's reader
processes (petrel_gateway.worker) answer GETs and HEADs from.

One process, the primary, opens the store and makes every write. A reader opens the
index as a RocksDB *secondary* instance and reads records straight from the segment
files on local disk. S3 promises read-after-write, so before each lookup a reader
compares the store's *generation* (a counter the primary bumps after every index
write, in a shared 8-byte file) with the one it last caught up to; when it moved, the
reader catches up with the primary (about 0.6 ms: RocksDB re-reads the MANIFEST and
the WAL) and reloads the bucket rows. A write is acknowledged only after its index
write and the bump, so a read that starts after the acknowledgement sees it.

What a reader cannot answer, it does not guess: a segment that is not a local file
(uploaded to a remote backend and dropped), a large object, or an index catch-up that
fails raise `NotServedHere`, and the gateway hands the request to the primary.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from petrel import format as fmt
from petrel import index as ix
from petrel.batchread import Lookup, look_up
from petrel.errors import CorruptionError, InvalidArgument, NoSuchBucket, NoSuchKey, SlowDown
from petrel.model import ByteRange, GetItem, ObjectData, ObjectInfo, resolve_range
from petrel.recovery import index_dir, segment_dir
from petrel.segments import SealedFiles, local_segment_path
from petrel.settings import StoreConfig
from petrel.store import Located, ObjectStream, check_key, one_chunk

log = logging.getLogger("petrel.replica")

_GENERATION = struct.Struct("<Q")
# The most record bytes a reader answers in one batch get (it holds the answer whole);
# the primary streams larger answers. The gateway's own whole-answer bound.
BATCH_ANSWER_BYTES_MAX = 16 * 1024 * 1024


def replica_dir(data_dir: str) -> str:
    """Where the generation file and the readers' secondary index files live; the
    primary empties it when it starts."""
    return os.path.join(data_dir, "replicas")


class NotServedHere(Exception):
    """A reader cannot answer this read; the primary must."""


class Generation:
    """A counter in a shared file: the primary bumps it after every index write
    (`create=True`, the file is reset to 0), readers compare it."""

    def __init__(self, path: str, *, create: bool) -> None:
        if create:
            with open(path, "wb") as file:
                file.write(bytes(_GENERATION.size))
        fd = os.open(path, os.O_RDWR if create else os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, _GENERATION.size,
                                  access=mmap.ACCESS_WRITE if create else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._value = _GENERATION.unpack_from(self._map, 0)[0]

    def bump(self) -> None:
        self._value += 1
        _GENERATION.pack_into(self._map, 0, self._value)

    def value(self) -> int:
        value: int = _GENERATION.unpack_from(self._map, 0)[0]
        return value

    def close(self) -> None:
        self._map.close()


@dataclass(slots=True)
class _Rows:
    """The index rows a reader keeps in memory (as the primary's Applier does)."""

    buckets: dict[str, fmt.BucketRow]


class _LocalSegments:
    """Ranged reads of segment files on local disk: the backend `petrel.batchread`
    reads through for records not in the page cache (in worker threads)."""

    def __init__(self, files: SealedFiles) -> None:
        self._files = files

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        segment_id = fmt.segment_id_from_blob_name(name)
        assert segment_id is not None
        handle = self._files.file(segment_id)
        try:
            if offset + length > os.fstat(handle.fileno()).st_size:
                raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
            data = os.pread(handle.fileno(), length, offset)
        except OSError as exc:  # closed under us by an eviction from the handle cache
            raise SlowDown(f"segment read interrupted ({exc}); retry") from exc
        if len(data) != length:
            raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
        return data


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
        # backend's are read by the primary (through its read cache).
        self._blob_root = os.path.join(data_dir, "blobs") if config.backend is None else None
        self._files = SealedFiles(self._path_of, config.open_files_max)
        self.backend = _LocalSegments(self._files)
        self.io_pool = ThreadPoolExecutor(config.io_threads,
                                          thread_name_prefix="petrel-replica-io")
        self.catch_ups = 0
        self.refresh()

    def close(self) -> None:
        self.io_pool.shutdown(wait=True)
        self._files.close()
        self.kv.close()
        self._generation.close()

    # ----- the index ---------------------------------------------------------------
    def refresh(self) -> None:
        """Catch up with the primary if it wrote since the last catch-up. Raises
        NotServedHere if the catch-up fails (the primary answers meanwhile)."""
        generation = self._generation.value()
        if generation == self._seen:
            return
        try:
            self.kv.catch_up()
            self.applier.buckets = {b.name: b.row for b in self.index.buckets()}
        except ix.IndexUnavailable as exc:
            log.warning("%s; the primary answers until a catch-up succeeds", exc)
            raise NotServedHere(str(exc)) from exc
        self._seen = generation
        self.catch_ups += 1

    def locate_object(self, bucket: str, key: str) -> Located:
        """As `Store.locate_object`, as of the last acknowledged write. Raises
        NoSuchBucket, NoSuchKey, and NotServedHere for what only the primary reads: a
        large object, or a record in a segment that is not a local file."""
        self.refresh()
        row = self._bucket(bucket)
        raw_key = key.encode()
        if not raw_key or len(raw_key) > self.limits.key_bytes_max:
            raise NotServedHere("a key the primary refuses")  # with the right error
        value = self.kv.get(ix.object_key(row.bucket_id, raw_key))
        if value is None:
            raise NoSuchKey(resource=f"{bucket}/{key}")
        entry = fmt.decode_index_value(value)
        if entry.flags & fmt.FLAG_LARGE:
            raise NotServedHere("a large object")
        try:
            self._files.file(entry.location.segment_id)
        except FileNotFoundError as exc:
            raise NotServedHere("a segment that is not a local file") from exc
        return Located(ObjectInfo.from_entry(bucket, key, entry), entry,
                       bucket.encode() + b"/" + raw_key)

    def _bucket(self, name: str) -> fmt.BucketRow:
        row = self.applier.buckets.get(name)
        if row is None:
            raise NoSuchBucket(resource=name)
        return row

    def _key(self, key: str) -> bytes:
        return check_key(key, self.limits)

    def plan_batch(self, bucket: str, items: Sequence[GetItem]) -> Lookup:
        """The index lookup of a batch get, made before anything is read or sent.
        Raises NoSuchBucket, and NotServedHere for a batch the primary must answer: one
        holding a large object or a record in a segment that is not a local file, or
        one whose records add up to more than BATCH_ANSWER_BYTES_MAX (answered in
        one piece here; the primary streams longer answers)."""
        self.refresh()
        self._bucket(bucket)
        lookup = look_up(self, items)
        if lookup.large:
            raise NotServedHere("a batch with a large object")
        total = 0
        segments: set[int] = set()
        for want in lookup.wants:
            location = want.entry.location
            total += location.length
            segments.add(location.segment_id)
        if total > BATCH_ANSWER_BYTES_MAX:
            raise NotServedHere("a batch answer to stream")
        try:
            for segment_id in segments:
                self._files.file(segment_id)
        except FileNotFoundError as exc:
            raise NotServedHere("a segment that is not a local file") from exc
        return lookup

    async def get_object(self, bucket: str, key: str, byte_range: ByteRange | None = None
                         ) -> ObjectData:
        """Large objects in a batch: refused by plan_batch before any read."""
        raise NotServedHere("a large object")

    # ----- records -----------------------------------------------------------------
    def _read_local(self, location: fmt.Location) -> tuple[bytearray, int] | None:
        """As `Store._read_local`: the bytes when the page cache holds them all."""
        try:
            data = self._files.read_cached(location.segment_id, location.offset,
                                           location.length)
        except FileNotFoundError:
            return None  # read by get_range, which then fails clearly
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
        location = entry.location
        try:
            data = self._files.read_cached(location.segment_id, location.offset,
                                           location.length)
        except FileNotFoundError as exc:
            raise NotServedHere("the segment was deleted") from exc
        if data is None:
            return None
        payload = self._verified(data, located)
        if start == 0 and length == entry.size:
            return payload, 0
        return payload[start : start + length], start

    async def read_object(self, located: Located, byte_range: ByteRange | None = None
                          ) -> ObjectStream:
        """As `Store.read_object` for a packed object: one read in a worker thread."""
        entry = located.entry
        start, length = resolve_range(byte_range, entry.size)
        location = entry.location
        loop = asyncio.get_running_loop()
        handle = self._files.file(location.segment_id)
        try:
            data = await loop.run_in_executor(self.io_pool, os.pread, handle.fileno(),
                                              location.length, location.offset)
        except OSError as exc:  # closed under us by an eviction from the handle cache
            raise SlowDown(f"segment read interrupted ({exc}); retry") from exc
        payload = self._verified(data, located)
        body = payload if start == 0 and length == entry.size else \
            payload[start : start + length]
        return ObjectStream(located.info, start, length, one_chunk(body), body)

    def _verified(self, data: bytes | bytearray, located: Located) -> bytes:
        return self._check_payload(data, 0, located.entry.location, located.full_key)

    def _check_payload(self, data: bytes | bytearray | mmap.mmap, offset: int,
                       location: fmt.Location, full_key: bytes) -> bytes:
        try:
            return fmt.verified_payload(data, offset, location, full_key)
        except CorruptionError as exc:
            log.error("corrupt record for %r in segment %x at %d: %s", full_key,
                      location.segment_id, location.offset, exc)
            raise CorruptionError(f"stored object failed its integrity check ({exc})",
                                  resource=full_key.decode(errors="replace")) from exc
