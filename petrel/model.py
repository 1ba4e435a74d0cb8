"""Typed values that cross the store's API boundary (no dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from petrel import format as fmt


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


@dataclass(frozen=True, slots=True)
class ObjectData:
    info: ObjectInfo
    body: bytes
    # The byte range served: [start, start + len(body)).
    start: int = 0


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, start + length) of an object; `length` None means to the end."""

    start: int
    length: int | None = None


@dataclass(frozen=True, slots=True)
class PutItem:
    bucket: str
    key: str
    data: bytes
    meta: fmt.ObjectMeta = fmt.EMPTY_META


@dataclass(frozen=True, slots=True)
class GetItem:
    bucket: str
    key: str
    byte_range: ByteRange | None = None


@dataclass(frozen=True, slots=True)
class GetResult:
    """One item of a batch get: `data` is set when found, `error` when not."""

    item: GetItem
    info: ObjectInfo | None
    data: bytes | None
    error: Exception | None = None


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
