"""The index: bucket/key -> location + object summary, in an ordered key-value store.

Two layers:

* `OrderedKV`, the narrow interface an external ordered store could also serve (point
  get, multi-get, ordered range scan, atomic batch write with compare-and-set).
  `RocksKV` implements it over RocksDB; it is the only module that imports rocksdict.
* `Index`, typed rows over that interface. The index is derived data: everything in it
  can be rebuilt from segments (petrel.recovery.rebuild_index).

Key layout (byte strings; one leading tag byte)::

    b"B" + bucket name                       -> BucketRow
    b"O" + bucket id (u32 big-endian) + key  -> index value (format.encode_index_value)
    b"S" + segment id (u32 big-endian)       -> SegmentRow
    b"M" + name                              -> store metadata

Object keys sort by their UTF-8 bytes under one bucket id, which is S3's list order.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from petrel import format as fmt

TAG_BUCKET, TAG_OBJECT, TAG_SEGMENT, TAG_META = b"B", b"O", b"S", b"M"
_U32BE = struct.Struct(">I")

# (key, value) to put, or (key, None) to delete.
Op = tuple[bytes, bytes | None]


class OrderedKV(Protocol):
    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""
        ...

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for `keys`, in order; None where absent."""
        ...

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < stop, ascending. A snapshot is not promised."""
        ...

    def write(self, ops: Iterable[Op], *, expect: Sequence[Op] = (), sync: bool = False) -> bool:
        """Apply `ops` atomically. If any (key, value) in `expect` does not hold (value
        None meaning absent), write nothing and return False. `sync` makes the write
        durable before returning; otherwise it may be lost in a machine crash (never
        torn: a batch is all or nothing)."""
        ...

    def close(self) -> None: ...


class IndexUnavailable(RuntimeError):
    """The index cannot be opened (a file where its directory should be, a damaged or
    locked database). The store refuses to start rather than start empty."""


_MEMORY_PROPERTIES = (("memtables", "rocksdb.cur-size-all-mem-tables"),
                      ("block_cache", "rocksdb.block-cache-usage"),
                      ("table_readers", "rocksdb.estimate-table-readers-mem"))


class RocksKV:
    """OrderedKV over RocksDB (rocksdict, raw bytes mode).

    `secondary`: open a read-only *secondary* instance of the index another process
    writes (reader processes, petrel_gateway.worker), keeping its own files under that
    directory; `catch_up` then brings it up to what the primary has written.
    `after_write`, when set, is called with the keys of every write once it is
    applied (the primary marks them for reader processes: petrel.replica)."""

    def __init__(self, path: str, *, cache_bytes: int = 256 * 1024 * 1024,
                 secondary: str | None = None) -> None:
        from rocksdict import (
            AccessType,
            BlockBasedOptions,
            Cache,
            DBCompressionType,
            Options,
            Rdict,
            WriteOptions,
        )

        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise IndexUnavailable(f"cannot open the index at {path}: {exc}") from exc
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Point lookups dominate (one per object read): a full bloom filter (10 bits per
        # key, ~1% false positives, ~1.2 bytes per object on disk) lets a get skip SST
        # files that cannot hold the key; index and filter blocks live in the block cache.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(cache_bytes))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        # Index values hold a random MD5 and checksum (24 bytes) but many zero high
        # bytes and repeated key prefixes: LZ4 keeps index bytes per object low cheaply.
        options.set_compression_type(DBCompressionType.lz4())
        options.set_bottommost_compression_type(DBCompressionType.zstd())
        options.set_max_background_jobs(2)
        # The options again for the column family: given only `options`, rocksdict
        # opens an existing index with its column family's options read back from the
        # OPTIONS file, where the block cache above is not recorded, so the index got
        # RocksDB's 8 MiB default instead. Once the index was one SST of ~900k keys,
        # its ~900 KiB index block no longer fit a cache shard: every get read and
        # decompressed it again, ~500 us per lookup (bench/results/
        # s3-2026-11-24-writelink-notes.md).
        try:
            if secondary is None:
                self._db = Rdict(path, options, column_families={"default": options})
            else:
                # A secondary keeps every table file open: the primary may delete one
                # (after a compaction) while this instance still reads it.
                options.set_max_open_files(-1)
                self._db = Rdict(path, options, column_families={"default": options},
                                 access_type=AccessType.secondary(secondary))
        except Exception as exc:  # rocksdict raises plain Exception("IO error: ...")
            raise IndexUnavailable(f"cannot open the index at {path}: {exc} (petrel fsck "
                                   "--rebuild-index rebuilds it from the segments)") from exc
        self._write_async = WriteOptions()
        self._write_sync = WriteOptions()
        self._write_sync.sync = True
        # Writers are serialised so compare-and-set is atomic against other writers.
        self._write_lock = threading.Lock()
        self._closed = False
        self._secondary = secondary is not None
        self.after_write: Callable[[list[bytes]], None] | None = None

    def catch_up(self) -> None:
        """A secondary instance: see what the primary has written until now (its WAL
        and table files; about 0.6 ms). Raises IndexUnavailable if RocksDB fails."""
        try:
            self._db.try_catch_up_with_primary()
        except Exception as exc:  # rocksdict raises plain Exception("IO error: ...")
            raise IndexUnavailable(f"index catch-up failed: {exc}") from exc

    def block_cache_capacity_bytes(self) -> int:
        """The block cache RocksDB uses for this instance (`cache_bytes`)."""
        return int(self._db.property_int_value("rocksdb.block-cache-capacity") or 0)

    def memory_bytes(self) -> dict[str, int]:
        """What RocksDB holds in memory, by part: memtables (index writes not yet
        flushed to SST files; RocksDB's default bound is two of 64 MiB), the block cache
        (bounded by `cache_bytes`), and SST table readers outside the cache."""
        return {part: int(self._db.property_int_value(name) or 0)
                for part, name in _MEMORY_PROPERTIES}

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        values = self._db.get(list(keys))
        assert isinstance(values, list)
        return values

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid():
            key = iterator.key()
            if key >= stop:
                return
            yield key, iterator.value()
            iterator.next()

    def write(self, ops: Iterable[Op], *, expect: Sequence[Op] = (), sync: bool = False) -> bool:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        written: list[bytes] = []
        for key, value in ops:
            written.append(key)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        with self._write_lock:
            if expect:
                current = self.multi_get([key for key, _ in expect])
                if any(have != want for have, (_, want) in zip(current, expect, strict=True)):
                    return False
            self._db.write(batch, self._write_sync if sync else self._write_async)
            if self.after_write is not None:
                self.after_write(written)
        return True

    def disk_bytes(self) -> int:
        """Bytes of SST files on disk (after a flush), for index-size reporting."""
        total = 0
        for name in os.listdir(self._db.path()):
            if name.endswith(".sst"):
                total += os.path.getsize(os.path.join(self._db.path(), name))
        return total

    def flush(self) -> None:
        self._db.flush(True)

    def compact(self) -> None:
        self._db.compact_range(None, None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._secondary:
                self._db.flush_wal(True)
            self._db.close()


def prefix_stop(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with `prefix`."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\xff" * (len(prefix) + 1024)
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def bucket_key(name: str) -> bytes:
    return TAG_BUCKET + name.encode()


def object_prefix(bucket_id: int) -> bytes:
    return TAG_OBJECT + _U32BE.pack(bucket_id)


def object_key(bucket_id: int, key: bytes) -> bytes:
    return TAG_OBJECT + _U32BE.pack(bucket_id) + key


def segment_key(segment_id: int) -> bytes:
    return TAG_SEGMENT + _U32BE.pack(segment_id)


def meta_key(name: str) -> bytes:
    return TAG_META + name.encode()


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    row: fmt.BucketRow


class Index:
    """Typed rows over an OrderedKV. Methods here do no I/O policy: callers decide
    when to write and whether a write must be synced."""

    def __init__(self, kv: OrderedKV) -> None:
        self.kv = kv

    # ----- buckets -----------------------------------------------------------------
    def buckets(self) -> list[Bucket]:
        stop = prefix_stop(TAG_BUCKET)
        return [Bucket(k[1:].decode(), fmt.decode_bucket_row(v))
                for k, v in self.kv.scan(TAG_BUCKET, stop)]

    def bucket_is_empty(self, bucket_id: int) -> bool:
        prefix = object_prefix(bucket_id)
        return next(iter(self.kv.scan(prefix, prefix_stop(prefix))), None) is None

    # ----- objects -----------------------------------------------------------------
    def get_entry(self, bucket_id: int, key: bytes) -> fmt.Entry | None:
        value = self.kv.get(object_key(bucket_id, key))
        return None if value is None else fmt.decode_index_value(value)

    def get_entries(self, bucket_id: int, keys: Sequence[bytes]) -> list[fmt.Entry | None]:
        values = self.kv.multi_get([object_key(bucket_id, k) for k in keys])
        return [None if v is None else fmt.decode_index_value(v) for v in values]

    def scan_objects(self, bucket_id: int, start_key: bytes = b"",
                     prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(object key, raw index value) from max(start_key, prefix), ascending,
        within `prefix`. Values stay raw so a caller that skips keys decodes nothing."""
        base = object_prefix(bucket_id)
        start = base + max(start_key, prefix)
        stop = prefix_stop(base + prefix) if prefix else prefix_stop(base)
        skip = len(base)
        for key, value in self.kv.scan(start, stop):
            yield key[skip:], value

    def iter_all_objects(self) -> Iterator[tuple[int, bytes, fmt.Entry]]:
        for key, value in self.kv.scan(TAG_OBJECT, prefix_stop(TAG_OBJECT)):
            (bucket_id,) = _U32BE.unpack_from(key, 1)
            yield bucket_id, key[5:], fmt.decode_index_value(value)

    # ----- segments ----------------------------------------------------------------
    def segments(self) -> dict[int, fmt.SegmentRow]:
        rows: dict[int, fmt.SegmentRow] = {}
        for key, value in self.kv.scan(TAG_SEGMENT, prefix_stop(TAG_SEGMENT)):
            (segment_id,) = _U32BE.unpack_from(key, 1)
            rows[segment_id] = fmt.decode_segment_row(segment_id, value)
        return rows

    # ----- store metadata ----------------------------------------------------------
    def get_meta_int(self, name: str, default: int = 0) -> int:
        value = self.kv.get(meta_key(name))
        return default if value is None else int.from_bytes(value, "little")


def meta_int_op(name: str, value: int) -> Op:
    return meta_key(name), value.to_bytes(8, "little")


def segment_op(row: fmt.SegmentRow) -> Op:
    return segment_key(row.segment_id), fmt.encode_segment_row(row)


def bucket_op(name: str, row: fmt.BucketRow | None) -> Op:
    return bucket_key(name), None if row is None else fmt.encode_bucket_row(row)
