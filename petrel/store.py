"""The store: petrel's engine API (buckets, objects, listing, batches), asyncio-native.

    store = await Store.open(StoreConfig(data_dir="/var/lib/petrel"))
    await store.create_bucket("train")
    await store.put_object("train", "a/0001.jpg", data)
    got = await store.get_object("train", "a/0001.jpg")
    await store.close()

Writes go through group commit (petrel.commit). Reads of records on local disk are a
`pread` plus an xxh3 check done inline on the event loop: for a page-cached record of at
most `pack_threshold_bytes` that costs microseconds, less than a hop to a thread. Reads
from a remote backend, uploads and fsyncs run in worker threads.

Method names follow the S3 operation they serve (`put_object`, `list_objects`, ...), so
one grep follows an operation from the gateway's route to the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import os
import re
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from petrel import format as fmt
from petrel import index as ix
from petrel.backends.base import Backend
from petrel.backends.factory import open_backend
from petrel.backends.local import LocalBackend
from petrel.commit import Committer, Pending, make_pending
from petrel.errors import (
    BlobNotFound,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    CorruptionError,
    EntityTooLarge,
    InvalidArgument,
    InvalidBucketName,
    KeyTooLongError,
    MetadataTooLarge,
    NoSuchBucket,
    NoSuchKey,
    PetrelError,
    TooManyItems,
)
from petrel.limits import Limits
from petrel.model import (
    BucketInfo,
    ByteRange,
    GetItem,
    GetResult,
    ListResult,
    ObjectData,
    ObjectInfo,
    PutItem,
    StoreStats,
    resolve_range,
)
from petrel.multipart import Multipart, Part, Upload
from petrel.recovery import OpenState, open_state, segment_dir
from petrel.segments import LocalFile, SealedFiles, stat_local_file
from petrel.settings import StoreConfig

if TYPE_CHECKING:
    from petrel.batchread import Lookup
    from petrel.compaction import CompactionReport

# Reads of a large object retried when its blob vanished because it was overwritten.
_LARGE_READ_ATTEMPTS = 3

log = logging.getLogger("petrel.store")

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_STREAM_CHUNK_BYTES = 1024 * 1024


def check_bucket_name(name: str) -> None:
    """S3's bucket naming rules; raises InvalidBucketName."""
    if (not _BUCKET_NAME.fullmatch(name) or ".." in name or _IP_ADDRESS.fullmatch(name)
            or ".-" in name or "-." in name):
        raise InvalidBucketName(f"invalid bucket name {name!r}", resource=name)


def bucket_row(buckets: Mapping[str, fmt.BucketRow], name: str) -> fmt.BucketRow:
    """The row of bucket `name`; raises NoSuchBucket."""
    row = buckets.get(name)
    if row is None:
        raise NoSuchBucket(resource=name)
    return row


def check_key(key: str, limits: Limits) -> bytes:
    """The key's bytes; raises InvalidArgument (empty), KeyTooLongError."""
    raw = key.encode("utf-8", errors="strict")
    if not raw:
        raise InvalidArgument("object key must not be empty")
    if len(raw) > limits.key_bytes_max:
        raise KeyTooLongError(resource=key)
    return raw


def check_meta(meta: fmt.ObjectMeta, limits: Limits) -> bytes:
    """The metadata's encoding; raises InvalidArgument (content type too long),
    MetadataTooLarge."""
    if len(meta.content_type.encode()) > limits.content_type_bytes_max:
        raise InvalidArgument("content type too long")
    user_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in meta.user)
    if user_bytes > limits.user_metadata_bytes_max:
        raise MetadataTooLarge()
    return fmt.encode_meta(meta)


@dataclass(frozen=True, slots=True)
class Located:
    """An object found in the index: what HEAD answers, and where GET reads from."""

    info: ObjectInfo
    entry: fmt.Entry
    full_key: bytes


@dataclass(frozen=True, slots=True)
class ObjectStream:
    """A read: `info`, the served range, and the body in chunks. `body` is set when
    the whole range is already in memory (packed objects). For a full read of a large
    object the content checksum is verified at the end; a mismatch raises
    CorruptionError from the iterator (the caller must abort the response)."""

    info: ObjectInfo
    start: int
    length: int
    chunks: AsyncIterator[bytes]
    body: bytes | None = None


class Store:
    """One data directory: index, local segments, and a backend."""

    def __init__(self, config: StoreConfig, backend: Backend, state: OpenState,
                 io_pool: ThreadPoolExecutor) -> None:
        self.config = config
        self.limits = config.limits
        self.backend = backend
        self.kv = state.kv
        self.index = state.index
        self.applier = state.applier
        self.io_pool = io_pool
        self.tmp_dir = os.path.join(config.data_dir, "tmp")
        self.committer = Committer(
            config=config, index=state.index, applier=state.applier,
            segment_dir=segment_dir(config.data_dir), backend=backend, io_pool=io_pool,
            seq=state.seq, active=state.active, local=state.local, rolled=state.rolled)
        self.committer.on_orphans = self._delete_orphans_later
        self.open_report = state
        self.corruptions_detected = 0
        self._pending_keys: dict[bytes, int] = {}
        self._sealed: SealedFiles | None = None
        if isinstance(backend, LocalBackend):
            self._sealed = SealedFiles(backend.path_of, config.open_files_max)
        # A remote backend's on-disk cache, read without waiting when warm.
        self._cached: Callable[[str, int, int], bytes | bytearray | None] | None = \
            getattr(backend, "read_cached", None)
        self._background: set[asyncio.Future[None]] = set()
        # Streams of large objects being read, by their pointer record's location
        # (counted), and the orphaned records among them: an overwrite or delete that
        # orphans a large object being streamed deletes its blob only once the last
        # such stream ends. Deleted at once, the blob vanished under a GET whose
        # headers were sent, and the client got a body cut short.
        self._large_reads: dict[fmt.Location, int] = {}
        self._orphans_held: dict[fmt.Location, bytes] = {}
        self.compactor: object | None = None
        self._multipart: Multipart | None = None
        self._closed = False

    # ----- open / close ------------------------------------------------------------
    @classmethod
    async def open(cls, config: StoreConfig, backend: Backend | None = None) -> Store:
        """Open (or create) the store under `config.data_dir`, recovering from a crash
        first. The default backend is the one `config.backend` names: a local directory,
        `<data_dir>/blobs`, when it is None."""
        os.makedirs(config.data_dir, exist_ok=True)
        tmp = os.path.join(config.data_dir, "tmp")
        shutil_rmtree(tmp)
        os.makedirs(tmp, exist_ok=True)
        if backend is None:
            backend = open_backend(config)
        loop = asyncio.get_running_loop()
        io_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="petrel-io")
        state = await loop.run_in_executor(io_pool, open_state, config, backend)
        store = cls(config, backend, state, io_pool)
        if state.dead_blobs:
            store._delete_blobs_later(state.dead_blobs)
        if state.orphan_records:  # large objects overwritten in the replayed tail
            store._delete_orphans_later(state.orphan_records)
        store.committer.start()
        if config.compaction_enabled:
            from petrel.compaction import Compactor

            compactor = Compactor(store)
            compactor.start()
            store.compactor = compactor
        return store

    async def close(self) -> None:
        """Commit what is pending, stop background work, close files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.compactor is not None:
            await self.compactor.stop()  # type: ignore[attr-defined]
        await self.committer.close(seal=not self.backend.reads_are_local)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.io_pool.shutdown(wait=True)  # before the backend closes files under it
        if self._sealed is not None:
            self._sealed.close()
        self.kv.close()
        self.backend.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _delete_blobs_later(self, names: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for name in names:
            future = loop.run_in_executor(self.io_pool, self._delete_blob, name)
            self._background.add(future)
            future.add_done_callback(self._background.discard)

    def _delete_orphans_later(self, records: list[tuple[bytes, fmt.Location]]) -> None:
        """Delete the blobs of large objects whose pointer records lost their last
        reference (read each record for its blob name, off the event loop); those being
        streamed now, once their last stream ends (`_hold_large`)."""
        for full_key, location in records:
            if location in self._large_reads:
                self._orphans_held[location] = full_key
        records = [record for record in records if record[1] not in self._large_reads]
        if not records:
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.io_pool, self._delete_orphans, records)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def _hold_large(self, location: fmt.Location) -> Callable[[], None]:
        """Keep the blob of the large object whose pointer record is at `location`
        until the returned release is called (once; later calls do nothing). Call it in
        the same step of the event loop as the lookup that found `location`: an
        overwrite committed in between would have orphaned the blob already."""
        self._large_reads[location] = self._large_reads.get(location, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._large_reads[location] - 1
            if left:
                self._large_reads[location] = left
                return
            del self._large_reads[location]
            full_key = self._orphans_held.pop(location, None)
            if full_key is None:
                return
            try:
                self._delete_orphans_later([(full_key, location)])
            except RuntimeError:  # no event loop any more (interpreter shutdown)
                log.warning("blob of %r not deleted (the store is closing); petrel fsck "
                            "finds it", full_key)

        return release

    def _delete_orphans(self, records: list[tuple[bytes, fmt.Location]]) -> None:
        for full_key, location in records:
            try:
                segment = self.committer.local.get(location.segment_id)
                if segment is not None:
                    data = segment.read(location.offset, location.length)
                else:
                    data = self.backend.get_range(fmt.segment_blob_name(location.segment_id),
                                                  location.offset, location.length)
                payload = fmt.verified_payload(data, 0, location, full_key)
                self._delete_blob(fmt.decode_large_ref(payload).blob)
            except Exception as exc:  # noqa: BLE001 - an orphan blob is found by fsck later
                log.warning("could not resolve orphan blob of %r: %s", full_key, exc)

    def large_blob_name(self, bucket: str, key: str) -> str:
        """The backend blob holding a large object (tests, fsck). Raises NoSuchKey, or
        InvalidArgument if the object is packed."""
        located = self.locate_object(bucket, key)
        if not located.entry.flags & fmt.FLAG_LARGE:
            raise InvalidArgument(f"{bucket}/{key} is packed, not a large object")
        location = located.entry.location
        local = self._read_local(location)
        data, offset = local if local is not None else (
            self.backend.get_range(fmt.segment_blob_name(location.segment_id),
                                   location.offset, location.length), 0)
        payload = fmt.verified_payload(data, offset, location, located.full_key)
        return fmt.decode_large_ref(payload).blob

    def _delete_blob(self, name: str) -> None:
        try:
            self.backend.delete(name)
        except Exception as exc:  # noqa: BLE001 - an orphan blob is found by fsck later
            log.warning("could not delete blob %s: %s", name, exc)

    # ----- validation --------------------------------------------------------------
    def _bucket(self, name: str) -> fmt.BucketRow:
        return bucket_row(self.applier.buckets, name)

    def _key(self, key: str) -> bytes:
        return check_key(key, self.limits)

    def _meta(self, meta: fmt.ObjectMeta) -> bytes:
        return check_meta(meta, self.limits)

    # ----- buckets -----------------------------------------------------------------
    async def create_bucket(self, name: str) -> BucketInfo:
        check_bucket_name(name)
        if name in self.applier.buckets:
            raise BucketAlreadyOwnedByYou(resource=name)
        pending_key = b"\x00bucket/" + name.encode()
        if self._pending_keys.get(pending_key):
            raise BucketAlreadyOwnedByYou(resource=name)
        pending = make_pending(key=name.encode(), flags=fmt.FLAG_BUCKET,
                               seq=self.committer.next_seq())
        (error,) = await self._submit([pending], [pending_key])
        if error is not None:
            raise error
        return self.head_bucket(name)

    async def delete_bucket(self, name: str) -> None:
        row = self._bucket(name)
        if not self.index.bucket_is_empty(row.bucket_id) or self._writes_pending(name):
            raise BucketNotEmpty(resource=name)
        pending = make_pending(key=name.encode(), flags=fmt.FLAG_BUCKET | fmt.FLAG_TOMBSTONE,
                               seq=self.committer.next_seq())
        (error,) = await self._submit([pending], [b"\x00bucket/" + name.encode()])
        if error is not None:
            raise error

    def head_bucket(self, name: str) -> BucketInfo:
        row = self._bucket(name)
        return BucketInfo(name, row.created_ms, bool(row.flags & fmt.BUCKET_PUBLIC_READ))

    def list_buckets(self) -> list[BucketInfo]:
        return [BucketInfo(n, r.created_ms, bool(r.flags & fmt.BUCKET_PUBLIC_READ))
                for n, r in sorted(self.applier.buckets.items())]

    def _writes_pending(self, bucket: str) -> bool:
        prefix = bucket.encode() + b"/"
        return any(k.startswith(prefix) and n for k, n in self._pending_keys.items())

    # ----- submitting writes -------------------------------------------------------
    async def _submit(self, pendings: list[Pending], keys: Sequence[bytes] | None = None
                      ) -> list[PetrelError | None]:
        tracked = list(keys) if keys is not None else [p.key for p in pendings]
        for key in tracked:
            self._pending_keys[key] = self._pending_keys.get(key, 0) + 1
        try:
            return await self.committer.submit(pendings)
        finally:
            for key in tracked:
                left = self._pending_keys[key] - 1
                if left:
                    self._pending_keys[key] = left
                else:
                    del self._pending_keys[key]

    def _object_pending(self, bucket: str, key: bytes, data: bytes, meta: bytes,
                        md5: bytes | None = None, parts: int = 0) -> Pending:
        digest = md5 if md5 is not None else hashlib.md5(data).digest()
        return make_pending(key=bucket.encode() + b"/" + key, flags=0,
                            seq=self.committer.next_seq(), payload=data, size=len(data),
                            meta=meta, md5=digest, parts=parts)

    # ----- objects: writes ---------------------------------------------------------
    async def put_object(self, bucket: str, key: str, data: bytes,
                         meta: fmt.ObjectMeta = fmt.EMPTY_META, *, md5: bytes | None = None,
                         parts: int = 0) -> ObjectInfo:
        """Store `data` under bucket/key; durable (per the durability mode) and visible
        when this returns. `md5` may be passed when already computed (it is trusted)."""
        self._bucket(bucket)
        raw_key, raw_meta = self._key(key), self._meta(meta)
        if len(data) > self.limits.object_bytes_max:
            raise EntityTooLarge(resource=key)
        if len(data) > self.limits.pack_threshold_bytes:
            return await self._put_large(bucket, key, raw_key, raw_meta, [data], len(data),
                                         md5, parts)
        pending = self._object_pending(bucket, raw_key, data, raw_meta, md5, parts)
        (error,) = await self._submit([pending])
        if error is not None:
            raise error
        return self._info(bucket, key, pending)

    def check_put(self, bucket: str, key: str, meta: fmt.ObjectMeta) -> None:
        """Raise what put_object would raise about where it stores and the metadata
        (NoSuchBucket, InvalidArgument, KeyTooLongError, MetadataTooLarge), storing
        nothing: a caller that must check a body after these checks runs them first."""
        self._bucket(bucket)
        self._key(key)
        self._meta(meta)

    async def put_object_stream(self, bucket: str, key: str, chunks: AsyncIterable[bytes],
                                meta: fmt.ObjectMeta = fmt.EMPTY_META, *,
                                etag: tuple[bytes, int] | None = None,
                                size_max: int | None = None) -> ObjectInfo:
        """As put_object, from an async stream of chunks (bodies larger than memory).
        Nothing becomes visible if the stream fails part way (a caller verifies a body's
        digests in the stream itself, raising before its end). `etag` (MD5, part count)
        replaces the computed ETag (multipart uploads); `size_max` raises the size limit
        for them."""
        self._bucket(bucket)
        object_bytes_max = size_max or self.limits.object_bytes_max
        raw_key, raw_meta = self._key(key), self._meta(meta)
        buffered: list[bytes] = []
        size = 0
        md5 = hashlib.md5()
        iterator = chunks.__aiter__()
        async for chunk in iterator:
            size += len(chunk)
            md5.update(chunk)
            if size > object_bytes_max:
                raise EntityTooLarge(resource=key)
            buffered.append(chunk)
            if size > self.limits.pack_threshold_bytes:
                return await self._put_large(
                    bucket, key, raw_key, raw_meta, buffered, None,
                    etag[0] if etag else None, etag[1] if etag else 0, rest=iterator,
                    md5_state=md5, size_max=object_bytes_max)
        data = b"".join(buffered)
        pending = self._object_pending(bucket, raw_key, data, raw_meta,
                                       etag[0] if etag else md5.digest(),
                                       etag[1] if etag else 0)
        (error,) = await self._submit([pending])
        if error is not None:
            raise error
        return self._info(bucket, key, pending)

    async def _put_large(self, bucket: str, key: str, raw_key: bytes, raw_meta: bytes,
                         head: list[bytes], size: int | None, md5: bytes | None, parts: int,
                         *, rest: AsyncIterator[bytes] | None = None,
                         md5_state: hashlib._Hash | None = None,
                         size_max: int | None = None) -> ObjectInfo:
        """Spool to a temp file, store it whole as a backend blob, then append a small
        pointer record. A crash before the record leaves an orphan blob, never a
        visible partial object."""
        loop = asyncio.get_running_loop()
        spool = os.path.join(self.tmp_dir, uuid.uuid4().hex)
        hasher = md5_state or hashlib.md5()
        checksum = fmt.content_hasher()
        total = 0
        try:
            with open(spool, "wb") as handle:
                for chunk in head:
                    handle.write(chunk)
                    checksum.update(chunk)
                    total += len(chunk)
                    if md5_state is None:
                        hasher.update(chunk)
                if rest is not None:
                    async for chunk in rest:
                        total += len(chunk)
                        if total > (size_max or self.limits.object_bytes_max):
                            raise EntityTooLarge(resource=key)
                        hasher.update(chunk)
                        checksum.update(chunk)
                        await loop.run_in_executor(self.io_pool, handle.write, chunk)
            # A fresh name per write: the pointer record, not the name, says which blob
            # an object uses. Its seq is taken only once the blob is stored, so the
            # record's seq orders it after every write submitted before it.
            blob = f"objects/{uuid.uuid4().hex}"
            await loop.run_in_executor(self.io_pool, self.backend.put_file, blob, spool)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
        assert size is None or size == total
        digest = md5 if md5 is not None else hasher.digest()
        ref = fmt.LargeRef(total, checksum.intdigest(), blob)
        pending = make_pending(key=bucket.encode() + b"/" + raw_key, flags=fmt.FLAG_LARGE,
                               seq=self.committer.next_seq(),
                               payload=fmt.encode_large_ref(ref), size=total,
                               meta=raw_meta, md5=digest, parts=parts)
        (error,) = await self._submit([pending])
        if error is not None:
            self._delete_blobs_later([blob])
            raise error
        return self._info(bucket, key, pending)

    def _info(self, bucket: str, key: str, pending: Pending) -> ObjectInfo:
        entry = fmt.Entry(fmt.Location(0, 0, 0, 0), pending.flags, pending.size, pending.seq,
                          pending.mtime_ms, pending.parts, pending.md5, pending.meta)
        return ObjectInfo.from_entry(bucket, key, entry)

    async def delete_object(self, bucket: str, key: str) -> bool:
        """Delete bucket/key; True if it existed. Deleting a missing key is not an
        error (as in S3)."""
        (result,) = await self.delete_objects(bucket, [key])
        if isinstance(result, PetrelError):
            raise result
        return result

    async def delete_objects(self, bucket: str, keys: Sequence[str]
                             ) -> list[bool | PetrelError]:
        """Delete many keys with one commit. Per key: True if it existed, False if not,
        or the error (e.g. KeyTooLongError) for that key."""
        row = self._bucket(bucket)
        if len(keys) > self.limits.batch_items_max:
            raise TooManyItems(f"at most {self.limits.batch_items_max} keys per request")
        results: list[bool | PetrelError] = []
        raw_keys: list[bytes | None] = []
        for key in keys:
            try:
                raw_keys.append(self._key(key))
            except PetrelError as exc:
                raw_keys.append(None)
                results.append(exc)
                continue
            results.append(False)
        valid = [k for k in raw_keys if k is not None]
        current = self.index.get_entries(row.bucket_id, valid)
        exists = dict(zip(valid, current, strict=True))
        prefix = bucket.encode() + b"/"
        pendings = []
        for position, raw in enumerate(raw_keys):
            if raw is None:
                continue
            if exists.get(raw) is None and not self._pending_keys.get(prefix + raw):
                continue
            results[position] = exists.get(raw) is not None
            pendings.append(make_pending(key=prefix + raw, flags=fmt.FLAG_TOMBSTONE,
                                         seq=self.committer.next_seq()))
        if pendings:
            errors = await self._submit(pendings)
            for error in errors:
                if error is not None and not isinstance(error, NoSuchBucket):
                    raise error
        return results

    async def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                          meta: fmt.ObjectMeta | None = None) -> ObjectInfo:
        """Copy an object; `meta` None keeps the source's metadata (S3 COPY directive),
        otherwise it replaces it (REPLACE)."""
        source = await self.get_object(src_bucket, src_key)
        new_meta = meta if meta is not None else fmt.ObjectMeta(
            source.info.content_type, source.info.user_metadata)
        md5, parts = _etag_parts(source.info.etag)
        return await self.put_object(dst_bucket, dst_key, source.body, new_meta, md5=md5,
                                     parts=parts)

    async def put_objects(self, items: Sequence[PutItem]) -> list[ObjectInfo | PetrelError]:
        """The batch put primitive: every valid item appended as one group with one
        durable commit. Per item, its ObjectInfo or its error."""
        if len(items) > self.limits.batch_items_max:
            raise TooManyItems(f"at most {self.limits.batch_items_max} items per batch")
        if sum(len(i.data) for i in items) > self.limits.batch_bytes_max:
            raise TooManyItems(f"at most {self.limits.batch_bytes_max} bytes per batch")
        results: list[ObjectInfo | PetrelError | None] = [None] * len(items)
        pendings: list[Pending] = []
        positions: list[int] = []
        large: list[tuple[int, PutItem]] = []
        for position, item in enumerate(items):
            try:
                self._bucket(item.bucket)
                raw_key, raw_meta = self._key(item.key), self._meta(item.meta)
            except PetrelError as exc:
                results[position] = exc
                continue
            if len(item.data) > self.limits.pack_threshold_bytes:
                large.append((position, item))
                continue
            pendings.append(self._object_pending(item.bucket, raw_key, item.data, raw_meta))
            positions.append(position)
        if pendings:
            errors = await self._submit(pendings)
            for position, pending, error in zip(positions, pendings, errors, strict=True):
                item = items[position]
                results[position] = error or self._info(item.bucket, item.key, pending)
        for position, item in large:
            try:
                results[position] = await self.put_object(item.bucket, item.key, item.data,
                                                          item.meta)
            except PetrelError as exc:
                results[position] = exc
        return [r for r in results if r is not None]

    # ----- objects: reads ----------------------------------------------------------
    def _entry(self, bucket: str, key: str) -> tuple[fmt.Entry, bytes]:
        """(index entry, key bytes); raises NoSuchBucket, NoSuchKey (the read hot path)."""
        row = self.applier.buckets.get(bucket)
        if row is None:
            raise NoSuchBucket(resource=bucket)
        raw_key = key.encode()
        if not raw_key or len(raw_key) > self.limits.key_bytes_max:
            self._key(key)  # raises the right error
        value = self.kv.get(ix.object_key(row.bucket_id, raw_key))
        if value is None:
            raise NoSuchKey(resource=f"{bucket}/{key}")
        return fmt.decode_index_value(value), raw_key

    def head_object(self, bucket: str, key: str) -> ObjectInfo:
        entry, _ = self._entry(bucket, key)
        return ObjectInfo.from_entry(bucket, key, entry)

    async def get_object(self, bucket: str, key: str, byte_range: ByteRange | None = None
                         ) -> ObjectData:
        """The object's bytes (or a range of them). Raises NoSuchKey, NoSuchBucket,
        InvalidRange, or CorruptionError if the stored bytes fail their checksum."""
        for attempt in range(_LARGE_READ_ATTEMPTS):
            entry, raw_key = self._entry(bucket, key)
            start, length = (0, entry.size) if byte_range is None else \
                resolve_range(byte_range, entry.size)
            payload = await self._read_payload(entry, bucket.encode() + b"/" + raw_key)
            if not entry.flags & fmt.FLAG_LARGE:
                break
            try:
                body = await self._read_large(payload, start, length)
            except BlobNotFound:
                # A large object's old blob is deleted as soon as an overwrite or delete
                # commits: a read that looked the object up just before finds it gone.
                # Answer as of now (the new version, or NoSuchKey), unless the object is
                # unchanged: then its blob is really missing.
                current, _ = self._entry(bucket, key)
                if current.seq == entry.seq or attempt == _LARGE_READ_ATTEMPTS - 1:
                    raise
                continue
            return ObjectData(body, start, bucket, key, entry)
        whole = start == 0 and length == entry.size
        return ObjectData(payload if whole else payload[start : start + length], start,
                          bucket, key, entry)

    def locate_object(self, bucket: str, key: str) -> Located:
        """Look an object up in the index (no segment read). Raises NoSuchBucket,
        NoSuchKey."""
        entry, raw_key = self._entry(bucket, key)
        return Located(ObjectInfo.from_entry(bucket, key, entry), entry,
                       bucket.encode() + b"/" + raw_key)

    async def read_object(self, located: Located, byte_range: ByteRange | None = None,
                          chunk_bytes: int = _STREAM_CHUNK_BYTES) -> ObjectStream:
        """Read what `locate_object` found: packed objects in one verified read, large
        ones streamed from the backend in `chunk_bytes` pieces."""
        entry = located.entry
        if not entry.flags & fmt.FLAG_LARGE:
            start, length = resolve_range(byte_range, entry.size)
            payload = await self._read_payload(entry, located.full_key)
            body = payload if start == 0 and length == entry.size else \
                payload[start : start + length]
            return ObjectStream(located.info, start, length, one_chunk(body), body)
        # Held before the first await: `located` was looked up in this step of the loop.
        release = self._hold_large(entry.location)
        try:
            start, length = resolve_range(byte_range, entry.size)
            ref = fmt.decode_large_ref(await self._read_payload(entry, located.full_key))
        except BaseException:
            release()
            raise
        chunks = _HeldChunks(self._stream_large(ref, start, length, chunk_bytes), release)
        return ObjectStream(located.info, start, length, chunks)

    def read_object_now(self, located: Located, byte_range: ByteRange | None = None
                        ) -> tuple[bytes, int] | None:
        """(body, start) of what `read_object` would return for a packed object whose
        record can be read without waiting (an unsealed or page-cached local segment),
        verified; None when `read_object` must be awaited instead (a large object, a
        remote or cold segment). Raises InvalidRange, CorruptionError."""
        entry = located.entry
        if entry.flags & fmt.FLAG_LARGE:
            return None
        start, length = resolve_range(byte_range, entry.size)
        local = self._read_local(entry.location)
        if local is None:
            return None
        payload = self._check_payload(local[0], local[1], entry.location, located.full_key)
        if start == 0 and length == entry.size:
            return payload, 0
        return payload[start : start + length], start

    async def open_object(self, bucket: str, key: str, byte_range: ByteRange | None = None,
                          chunk_bytes: int = _STREAM_CHUNK_BYTES) -> ObjectStream:
        """A streamed read, for objects too large to hold in memory at once."""
        return await self.read_object(self.locate_object(bucket, key), byte_range,
                                      chunk_bytes)

    async def _read_payload(self, entry: fmt.Entry, full_key: bytes) -> bytes:
        """The verified payload of the record `entry` points at. Raises CorruptionError
        (counted, logged) if it fails its checksum or the segment ends before it."""
        location = entry.location
        local = self._read_local(location)
        if local is not None:
            return self._check_payload(local[0], local[1], location, full_key)
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(
                self.io_pool, self.backend.get_range,
                fmt.segment_blob_name(location.segment_id), location.offset,
                location.length)
        except InvalidArgument as exc:
            # The backend's word for a range past a blob's end. This range comes from the
            # index, so the segment was cut short under us: corruption, not a bad request.
            self.corruptions_detected += 1
            log.error("corrupt record for %r in segment %x at %d: the segment ends before "
                      "the record's %d bytes (%s)", full_key, location.segment_id,
                      location.offset, location.length, exc)
            raise CorruptionError("stored object failed its integrity check (its record "
                                  "is cut short)",
                                  resource=full_key.decode(errors="replace")) from exc
        return self._check_payload(data, 0, location, full_key)

    def _read_local(self, location: fmt.Location
                    ) -> tuple[bytes | bytearray | mmap.mmap, int] | None:
        """(buffer, offset of `location` in it) when the bytes can be read without
        waiting on the event loop: a pread of a local unsealed segment (just written,
        in the page cache), or a non-blocking read of a sealed local one or of a remote
        one's blocks in the read cache. None when they must be read in a worker thread:
        a remote read, or a cold file (a page-cache miss on the loop would stall every
        request for a disk seek)."""
        segment = self.committer.local.get(location.segment_id)
        if segment is not None:
            return segment.read(location.offset, location.length), 0
        if self._sealed is not None:
            try:
                data = self._sealed.read_cached(location.segment_id, location.offset,
                                                location.length)
            except FileNotFoundError:
                return None  # deleted meanwhile: the backend answers BlobNotFound
            return None if data is None else (data, 0)
        if self._cached is not None:
            cached = self._cached(fmt.segment_blob_name(location.segment_id),
                                  location.offset, location.length)
            return None if cached is None else (cached, 0)
        return None

    def local_file(self, segment_id: int) -> LocalFile | None:
        """The file holding a segment on this machine (an unsealed segment, or any of
        the local backend's), for a client reading records itself (batch locate);
        None when the segment is not a local file."""
        segment = self.committer.local.get(segment_id)
        if segment is not None:
            path = segment.path
        elif isinstance(self.backend, LocalBackend):
            path = self.backend.path_of(fmt.segment_blob_name(segment_id))
        else:
            return None
        return stat_local_file(path)

    def forget_segment(self, segment_id: int) -> None:
        """A segment is being deleted: close its file."""
        if self._sealed is not None:
            self._sealed.forget(segment_id)

    def _check_payload(self, data: bytes | bytearray | mmap.mmap, offset: int,
                       location: fmt.Location, full_key: bytes) -> bytes:
        try:
            return fmt.verified_payload(data, offset, location, full_key)
        except CorruptionError as exc:
            self.corruptions_detected += 1
            log.error("corrupt record for %r in segment %x at %d: %s", full_key,
                      location.segment_id, location.offset, exc)
            raise CorruptionError(f"stored object failed its integrity check ({exc})",
                                  resource=full_key.decode(errors="replace")) from exc

    async def _read_large(self, payload: bytes, start: int, length: int) -> bytes:
        ref = fmt.decode_large_ref(payload)
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(self.io_pool, self.backend.get_range,
                                              ref.blob, start, length)
        except InvalidArgument as exc:  # the blob is shorter than its reference says
            raise self._large_cut_short(ref, exc) from exc
        if start == 0 and length == ref.size and fmt.content_checksum(body) != \
                ref.content_checksum:
            self.corruptions_detected += 1
            raise CorruptionError(f"large object blob {ref.blob} failed its checksum")
        return body

    async def _stream_large(self, ref: fmt.LargeRef, start: int, length: int,
                            chunk_bytes: int) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        verify = start == 0 and length == ref.size
        checksum = fmt.content_hasher()
        position, end = start, start + length
        while position < end:
            count = min(chunk_bytes, end - position)
            try:
                chunk = await loop.run_in_executor(self.io_pool, self.backend.get_range,
                                                   ref.blob, position, count)
            except InvalidArgument as exc:  # the blob is shorter than its reference says
                raise self._large_cut_short(ref, exc) from exc
            if verify:
                checksum.update(chunk)
            position += count
            if verify and position == end and checksum.intdigest() != ref.content_checksum:
                self.corruptions_detected += 1
                raise CorruptionError(f"large object blob {ref.blob} failed its checksum")
            yield chunk

    def _large_cut_short(self, ref: fmt.LargeRef, exc: InvalidArgument) -> CorruptionError:
        """A large object's blob ends before the size its reference records (part of
        the large-object read path): count, log, and the error to raise."""
        self.corruptions_detected += 1
        log.error("large object blob %s is shorter than its %d bytes: %s", ref.blob,
                  ref.size, exc)
        return CorruptionError("stored object failed its integrity check (its data is "
                               "cut short)")

    async def get_objects(self, items: Sequence[GetItem]) -> list[GetResult]:
        """The batch get primitive: results in request order, missing keys included.
        Records are read sorted by segment and offset, neighbours merged into one read
        (petrel.batchread)."""
        from petrel.batchread import read_batch

        if len(items) > self.limits.batch_items_max:
            raise TooManyItems(f"at most {self.limits.batch_items_max} items per batch")
        return await read_batch(self, items)

    def plan_batch(self, bucket: str, items: Sequence[GetItem]) -> Lookup:
        """The index lookup of a batch get answered whole (the gateway's fast lane),
        made before anything is read or sent. Raises NoSuchBucket, and NotServedHere
        for a batch the full stack streams (petrel.batchread.look_up_whole)."""
        from petrel.batchread import look_up_whole

        self._bucket(bucket)
        return look_up_whole(self, items)

    # ----- listing -----------------------------------------------------------------
    def list_objects(self, bucket: str, *, prefix: str = "", delimiter: str = "",
                     start_after: str = "", max_keys: int = 1000) -> ListResult:
        """Keys after `start_after` (exclusive) under `prefix`, in UTF-8 byte order,
        rolled up into common prefixes at `delimiter`: S3 ListObjects semantics. The
        marker (v1), start-after and continuation token (v2) all map to `start_after`."""
        from petrel.listing import list_objects

        row = self._bucket(bucket)
        max_keys = max(0, min(max_keys, self.limits.list_keys_max))
        return list_objects(self.index, bucket, row.bucket_id, prefix=prefix,
                            delimiter=delimiter, start_after=start_after, max_keys=max_keys)

    # ----- multipart ---------------------------------------------------------------
    @property
    def multipart(self) -> Multipart:
        if self._multipart is None:
            self._multipart = Multipart(
                os.path.join(self.config.data_dir, "uploads"),
                part_bytes_min=self.limits.multipart_part_bytes_min,
                part_bytes_max=self.limits.multipart_part_bytes_max,
                object_bytes_max=self.limits.multipart_object_bytes_max)
        return self._multipart

    def create_multipart_upload(self, bucket: str, key: str,
                                meta: fmt.ObjectMeta = fmt.EMPTY_META) -> Upload:
        self._bucket(bucket)
        self._key(key)
        self._meta(meta)
        return self.multipart.create(bucket, key, meta)

    async def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                          chunks: AsyncIterable[bytes]) -> Part:
        upload = self.multipart.get(upload_id, bucket, key)
        return await self.multipart.upload_part(upload, part_number, chunks)

    async def upload_part_copy(self, bucket: str, key: str, upload_id: str,
                               part_number: int, src_bucket: str, src_key: str,
                               byte_range: ByteRange | None = None) -> Part:
        upload = self.multipart.get(upload_id, bucket, key)
        source = await self.open_object(src_bucket, src_key, byte_range)
        return await self.multipart.upload_part(upload, part_number, source.chunks)

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        return self.multipart.list_parts(self.multipart.get(upload_id, bucket, key))

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        self._bucket(bucket)
        return self.multipart.list_uploads(bucket, prefix)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self.multipart.abort(self.multipart.get(upload_id, bucket, key))

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: Sequence[tuple[int, str]]) -> ObjectInfo:
        """Assemble the listed parts into bucket/key (ETag: MD5 of part MD5s, -N), then
        drop the staged parts. Raises InvalidPart, InvalidPartOrder, EntityTooSmall."""
        multipart = self.multipart
        upload = multipart.get(upload_id, bucket, key)
        multipart.begin_complete(upload_id)
        try:
            chosen, digest = multipart.plan_complete(upload, parts)
            info = await self.put_object_stream(
                bucket, key, multipart.read_parts(upload, chosen), upload.meta,
                etag=(digest, len(chosen)), size_max=self.limits.multipart_object_bytes_max)
            multipart.abort(upload)
        finally:
            multipart.end_complete(upload_id)
        return info

    # ----- stats -------------------------------------------------------------------
    def stats(self) -> StoreStats:
        # Compacted segments wait out a grace period before deletion: counted apart, so
        # `dead_bytes` is what compaction could still reclaim.
        rows = [r for r in self.applier.segments.values() if r.state != fmt.SEGMENT_DEAD]
        retired = [r for r in self.applier.segments.values() if r.state == fmt.SEGMENT_DEAD]
        return StoreStats(
            buckets=len(self.applier.buckets),
            objects=self.applier.object_count,
            segments=len(rows),
            sealed_segments=sum(r.state == fmt.SEGMENT_SEALED for r in rows),
            live_bytes=sum(r.live_bytes for r in rows),
            dead_bytes=sum(r.dead_bytes for r in rows),
            corruptions_detected=self.corruptions_detected,
            retired_segments=len(retired),
            retired_bytes=sum(r.live_bytes + r.dead_bytes for r in retired),
        )

    async def compact(self, *, dead_fraction: float | None = None,
                      bytes_per_s: int | None = None) -> list[CompactionReport]:
        """Compact now every sealed segment at least `dead_fraction` dead (default: the
        configured threshold), copying at most `bytes_per_s` (default: configured).
        Shares the background compactor's lock, so the two never work at once."""
        from petrel.compaction import Compactor

        compactor = self.compactor
        if not isinstance(compactor, Compactor):
            compactor = self.compactor = Compactor(self)  # not started: no background loop
        return await compactor.run_once(dead_fraction, bytes_per_s)

    async def flush(self) -> None:
        """Wait until every write submitted so far is committed (tests, shutdown)."""
        await self.committer.submit([])


def _etag_parts(etag: str) -> tuple[bytes, int]:
    digest, _, parts = etag.partition("-")
    return bytes.fromhex(digest), int(parts) if parts else 0


async def one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _HeldChunks:
    """A large object's chunks, holding its blob (Store._hold_large) until the stream
    ends: read to the end, failed, closed, or dropped unread."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], release: Callable[[], None]
                 ) -> None:
        self._chunks = chunks
        self._release = release

    def __aiter__(self) -> _HeldChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:  # StopAsyncIteration included: the stream is over
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        await self._chunks.aclose()

    def __del__(self) -> None:
        self._release()


def shutil_rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
