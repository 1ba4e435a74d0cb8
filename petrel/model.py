"""Typed values that cross the store's API boundary (no dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from petrel import format as fmt
from petrel.errors import InvalidRange


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created_ms: int
    public_read: bool = False


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes: hex MD5, or "hex-N" for multipart
    last_modified_ms: int
    content_type: str = ""
    user_metadata: tuple[tuple[str, str], ...] = ()
    large: bool = False

    @staticmethod
    def from_entry(bucket: str, key: str, entry: fmt.Entry) -> ObjectInfo:
        meta = fmt.decode_meta(entry.meta)
        return ObjectInfo(bucket, key, entry.size, entry.etag, entry.mtime_ms,
                          meta.content_type, meta.user, bool(entry.flags & fmt.FLAG_LARGE))


class ObjectData:
    """A read object: `body` (the range served, [start, start + len(body))) and `info`.

    Not a dataclass: `info` is built on first use from the index entry, because a read
    that only wants the bytes (a data loader) should not pay for decoding metadata and
    formatting an ETag (about a fifth of a 10 KiB in-process get)."""

    __slots__ = ("_bucket", "_entry", "_info", "_key", "body", "start")

    def __init__(self, body: bytes, start: int, bucket: str, key: str,
                 entry: fmt.Entry) -> None:
        self.body = body
        self.start = start
        self._bucket = bucket
        self._key = key
        self._entry = entry
        self._info: ObjectInfo | None = None

    @property
    def info(self) -> ObjectInfo:
        if self._info is None:
            self._info = ObjectInfo.from_entry(self._bucket, self._key, self._entry)
        return self._info

    def __repr__(self) -> str:
        return f"ObjectData({self._bucket}/{self._key}, {len(self.body)} bytes at {self.start})"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, start + length) of an object; `length` None means to the end."""

    start: int
    length: int | None = None


def resolve_range(byte_range: ByteRange | None, size: int) -> tuple[int, int]:
    """(start, length) of `byte_range` within an object of `size` bytes; a range that
    starts at or past the end raises InvalidRange (a zero-byte object's range 0 is
    served empty)."""
    if byte_range is None:
        return 0, size
    start = byte_range.start
    if start < 0 or (start >= size and not (size == 0 and start == 0)):
        raise InvalidRange(f"range start {start} beyond object size {size}")
    length = size - start if byte_range.length is None else min(byte_range.length,
                                                                 size - start)
    if length < 0:
        raise InvalidRange("negative range length")
    return start, length


@dataclass(frozen=True, slots=True)
class PutItem:
    bucket: str
    key: str
    data: bytes
    meta: fmt.ObjectMeta = fmt.EMPTY_META


class GetItem(NamedTuple):
    """One key of a batch get. A NamedTuple, not a frozen dataclass: a batch builds one
    per key, and a tuple is several times cheaper to construct."""

    bucket: str
    key: str
    byte_range: ByteRange | None = None


class GetResult:
    """One item of a batch get: `data` is set when found, `error` when not. `info` is
    built on first use (see ObjectData)."""

    __slots__ = ("_entry", "_info", "data", "error", "item")

    def __init__(self, item: GetItem, data: bytes | None, error: Exception | None = None,
                 entry: fmt.Entry | None = None) -> None:
        self.item = item
        self.data = data
        self.error = error
        self._entry = entry
        self._info: ObjectInfo | None = None

    @property
    def entry(self) -> fmt.Entry | None:
        """The index entry of a found object (size, ETag, mtime without decoding)."""
        return self._entry

    @property
    def info(self) -> ObjectInfo | None:
        if self._info is None and self._entry is not None:
            self._info = ObjectInfo.from_entry(self.item.bucket, self.item.key, self._entry)
        return self._info

    def __repr__(self) -> str:
        state = f"{len(self.data)} bytes" if self.data is not None else repr(self.error)
        return f"GetResult({self.item.bucket}/{self.item.key}: {state})"


@dataclass(frozen=True, slots=True)
class ListResult:
    objects: list[ObjectInfo] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    is_truncated: bool = False
    # Key (or common prefix) to continue after when truncated.
    next_marker: str | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    buckets: int
    objects: int
    segments: int
    sealed_segments: int
    live_bytes: int
    dead_bytes: int
    corruptions_detected: int
    # Compacted segments waiting out the delete grace period (not in the counts above).
    retired_segments: int = 0
    retired_bytes: int = 0
