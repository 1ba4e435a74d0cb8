"""On-disk format v1: the one module that knows struct layouts, magic numbers, the
version byte, flags and checksums. docs/format.md has the same tables in prose.

A segment file is::

    segment header (48 bytes)
    record, record, ...            (appended; a record never changes once written)
    footer table + trailer         (only once sealed; the segment never changes again)

Every record carries a 32-bit checksum over its header fields, so that its length can
be trusted before the rest of it is read, and an xxh3-64 checksum over all of it.
Decoders never return unchecked bytes: they raise `TruncatedRecord` when a record's
header checks out but its bytes end early (a torn append), `CorruptRecordBody` when its
header checks out but the rest does not, and `CorruptRecord`/`CorruptSegment` when
they do not check out at all.

The index value (what RocksDB stores per key) is also defined here, because it is bytes
on disk too, and shares the footer's entry layout.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from petrel.errors import CorruptionError

FORMAT_VERSION = 1

# ----- flags (record and entry) -------------------------------------------------------
FLAG_TOMBSTONE = 0x01  # a delete: the key (object or bucket) is gone as of this seq
FLAG_LARGE = 0x02  # payload is a reference to a whole blob in the backend
FLAG_BUCKET = 0x04  # the record is about a bucket (key = bucket name), not an object
FLAGS_KNOWN = FLAG_TOMBSTONE | FLAG_LARGE | FLAG_BUCKET

_checksum = xxhash.xxh3_64_intdigest
_Hasher = xxhash.xxh3_64


class CorruptRecord(CorruptionError):
    """A record's bytes do not parse or fail their checksum."""


class TruncatedRecord(CorruptRecord):
    """The bytes end before the record does (a torn append at a segment's tail): either
    before its header is complete, or before the length its valid header declares."""


class CorruptRecordBody(CorruptRecord):
    """The record's header checks out but its full checksum does not: `length`, from
    the verified header, is where the record ends, so a scan can step over it whole
    instead of searching its payload (user bytes) for something that looks valid."""

    def __init__(self, message: str, *, length: int) -> None:
        super().__init__(message)
        self.length = length


class CorruptSegment(CorruptionError):
    """A segment header or footer does not parse or fails its checksum."""


# ----- segment header -------------------------------------------------------------------
# offset size field
#      0    8 magic  b"PTRLSEG\0"
#      8    2 version (u16) = 1
#     10    2 flags (u16), reserved = 0
#     12    4 header size (u32) = 48
#     16    8 segment id (u64)
#     24    8 created at, unix ms (u64)
#     32    8 reserved = 0
#     40    8 xxh3-64 of bytes 0..40
SEGMENT_MAGIC = b"PTRLSEG\x00"
_SEGMENT_HEADER = struct.Struct("<8sHHIQQQ")
SEGMENT_HEADER_BYTES = _SEGMENT_HEADER.size + 8


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    segment_id: int
    created_ms: int


def encode_segment_header(header: SegmentHeader) -> bytes:
    body = _SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, 0, SEGMENT_HEADER_BYTES,
        header.segment_id, header.created_ms, 0,
    )
    return body + _checksum(body).to_bytes(8, "little")


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader:
    if len(buf) < SEGMENT_HEADER_BYTES:
        raise CorruptSegment(f"segment header truncated: {len(buf)} bytes")
    body = bytes(buf[: _SEGMENT_HEADER.size])
    magic, version, flags, size, segment_id, created_ms, _ = _SEGMENT_HEADER.unpack(body)
    stored = int.from_bytes(buf[_SEGMENT_HEADER.size : SEGMENT_HEADER_BYTES], "little")
    if magic != SEGMENT_MAGIC:
        raise CorruptSegment("bad segment magic")
    if stored != _checksum(body):
        raise CorruptSegment("segment header checksum mismatch")
    if version != FORMAT_VERSION or flags != 0 or size != SEGMENT_HEADER_BYTES:
        raise CorruptSegment(f"unsupported segment header: version={version} flags={flags}")
    return SegmentHeader(segment_id=segment_id, created_ms=created_ms)


# ----- record ---------------------------------------------------------------------------
# offset size field
#      0    2 magic (u16) 0xE3A9, bytes A9 E3
#      2    1 version (u8) = 1
#      3    1 flags (u8): 0x01 tombstone, 0x02 large, 0x04 bucket; others must be 0
#      4    2 key length K (u16)
#      6    2 metadata length M (u16)
#      8    4 payload length P (u32)
#     12    8 seq (u64): store-wide write sequence; copies made by compaction keep it
#     20    8 last-modified, unix ms (u64)
#     28    2 ETag part count (u16): 0 = single-part (ETag is the MD5 of the content)
#     30   16 ETag MD5 (raw)
#     46    4 header checksum (u32): low 32 bits of xxh3-64 of bytes 0..46
#     50    K key: b"bucket/key" for objects, b"bucket" for bucket records
#   50+K    M metadata (see encode_meta)
# 50+K+M    P payload: the object's bytes, or a LargeRef for FLAG_LARGE
#  end-8    8 xxh3-64 of every byte before it in the record (header checksum included)
# The header checksum lets a scanner trust a record's length before reading the rest:
# a torn record with a valid header is a torn tail, and a record whose header checks
# out is never searched inside for another record (its payload is user bytes).
RECORD_MAGIC = 0xE3A9
_RECORD_FIELDS = struct.Struct("<HBBHHIQQH16s")  # what the header checksum covers
_RECORD_HEADER = struct.Struct("<HBBHHIQQH16sI")
RECORD_HEADER_BYTES = _RECORD_HEADER.size
RECORD_HEADER_CHECKSUM_BYTES = RECORD_HEADER_BYTES - _RECORD_FIELDS.size
RECORD_CHECKSUM_BYTES = 8
RECORD_OVERHEAD_BYTES = RECORD_HEADER_BYTES + RECORD_CHECKSUM_BYTES
_HEADER_CHECKSUM_MASK = 0xFFFF_FFFF
_RECORD_SYNC = RECORD_MAGIC.to_bytes(2, "little") + bytes([FORMAT_VERSION])
NO_MD5 = bytes(16)


@dataclass(frozen=True, slots=True)
class Record:
    flags: int
    key: bytes
    meta: bytes
    payload: bytes
    seq: int
    mtime_ms: int
    parts: int
    md5: bytes
    checksum: int
    length: int  # bytes the record occupies in its segment
    payload_length: int = -1  # the payload's length (`payload` may be left out)

    @property
    def object_size(self) -> int:
        """The object's size: the payload's length, or a large object's size."""
        if self.flags & FLAG_LARGE:
            return decode_large_ref(self.payload).size
        return self.payload_length if self.payload_length >= 0 else len(self.payload)


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready to append: `parts` are written with one writev, never joined."""

    parts: tuple[bytes, ...]
    length: int
    checksum: int


def record_length(key_len: int, meta_len: int, payload_len: int) -> int:
    return RECORD_OVERHEAD_BYTES + key_len + meta_len + payload_len


def encode_record(
    *, flags: int, key: bytes, meta: bytes, payload: bytes, seq: int, mtime_ms: int,
    parts: int = 0, md5: bytes = NO_MD5,
) -> EncodedRecord:
    assert flags & ~FLAGS_KNOWN == 0, flags
    assert len(md5) == 16
    fields = _RECORD_FIELDS.pack(
        RECORD_MAGIC, FORMAT_VERSION, flags, len(key), len(meta), len(payload),
        seq, mtime_ms, parts, md5,
    )
    header_checksum = _checksum(fields) & _HEADER_CHECKSUM_MASK
    header = fields + header_checksum.to_bytes(RECORD_HEADER_CHECKSUM_BYTES, "little")
    hasher = _Hasher(header)
    hasher.update(key)
    hasher.update(meta)
    hasher.update(payload)
    checksum = hasher.intdigest()
    length = record_length(len(key), len(meta), len(payload))
    return EncodedRecord((header, key, meta, payload, checksum.to_bytes(8, "little")),
                         length, checksum)


def decode_record(buf: bytes | memoryview, offset: int = 0, *, payload: bool = True
                  ) -> Record:
    """Decode the record at `offset` of `buf`, verifying both its checksums. With
    `payload=False` the payload is checked but not copied out (scans that only need
    the summary), except a large-object reference, which is small.

    Raises, in the order checked:
    TruncatedRecord if `buf` ends inside the header, CorruptRecord if the header does
    not check out (magic, version, header checksum, flags), TruncatedRecord if the
    header checks out but `buf` ends before the length it declares, and
    CorruptRecordBody (carrying that length) if the full checksum does not match.
    """
    end_of_data = len(buf)
    if offset + RECORD_HEADER_BYTES > end_of_data:
        raise TruncatedRecord(f"record header at {offset} runs past end ({end_of_data})")
    (magic, version, flags, key_len, meta_len, payload_len, seq, mtime_ms, parts,
     md5, header_checksum) = _RECORD_HEADER.unpack_from(buf, offset)
    if magic != RECORD_MAGIC or version != FORMAT_VERSION:
        raise CorruptRecord(f"bad record magic/version at {offset}")
    view = memoryview(buf)
    fields_end = offset + _RECORD_FIELDS.size
    if _checksum(view[offset:fields_end]) & _HEADER_CHECKSUM_MASK != header_checksum:
        raise CorruptRecord(f"record header checksum mismatch at {offset}")
    if flags & ~FLAGS_KNOWN:
        raise CorruptRecord(f"unknown record flags {flags:#x} at {offset}")
    length = RECORD_OVERHEAD_BYTES + key_len + meta_len + payload_len
    end = offset + length
    if end > end_of_data:
        raise TruncatedRecord(f"record at {offset} of {length} bytes runs past end")
    stored = int.from_bytes(view[end - 8 : end], "little")
    checksum = _checksum(view[offset : end - 8])
    if stored != checksum:
        raise CorruptRecordBody(f"record checksum mismatch at {offset}", length=length)
    start_key = offset + RECORD_HEADER_BYTES
    start_meta = start_key + key_len
    start_payload = start_meta + meta_len
    return Record(
        flags=flags,
        key=bytes(view[start_key:start_meta]),
        meta=bytes(view[start_meta:start_payload]),
        payload=bytes(view[start_payload : end - 8])
        if payload or flags & FLAG_LARGE else b"",
        seq=seq, mtime_ms=mtime_ms, parts=parts, md5=md5,
        checksum=checksum, length=length, payload_length=payload_len,
    )


_RECORD_PREFIX = struct.Struct("<HBBHHI")


def verified_payload(buf: bytes | bytearray | mmap.mmap, offset: int, location: Location,
                     key: bytes) -> bytes:
    """The payload of the record at `offset` in `buf`, which the index says is
    `location` and holds `key`: one header unpack, one hash, one copy (the read path).

    Raises TruncatedRecord if `buf` is short, CorruptRecord if the bytes are not that
    record (bad framing, checksum mismatch, or another key).

    The header checksum is not checked: the full checksum covers it, and is compared
    with the index's copy too, so a second hash would only slow the read path down.
    """
    return checked_payload(buf, offset, location.length, location.checksum, key)


def checked_payload(buf: bytes | bytearray | mmap.mmap, offset: int, length: int,
                    checksum: int, key: bytes) -> bytes:
    """`verified_payload` of the record of `length` bytes and `checksum` at `offset`."""
    end = offset + length
    if end > len(buf) or length < RECORD_OVERHEAD_BYTES:
        raise TruncatedRecord(f"record at {offset} of {length} bytes runs past end")
    magic, version, _, key_len, meta_len, payload_len = _RECORD_PREFIX.unpack_from(buf, offset)
    if magic != RECORD_MAGIC or version != FORMAT_VERSION or \
            RECORD_OVERHEAD_BYTES + key_len + meta_len + payload_len != length:
        raise CorruptRecord(f"bad record framing at {offset}")
    if int.from_bytes(buf[end - 8 : end], "little") != checksum or \
            _checksum(memoryview(buf)[offset : end - 8]) != checksum:
        raise CorruptRecord(f"record checksum mismatch at {offset}")
    key_start = offset + RECORD_HEADER_BYTES
    if key_len != len(key) or buf[key_start : key_start + key_len] != key:
        raise CorruptRecord(f"record at {offset} holds another key")
    if isinstance(buf, bytearray):  # a read buffer: one copy out, as bytes
        return bytes(memoryview(buf)[key_start + key_len + meta_len : end - 8])
    return buf[key_start + key_len + meta_len : end - 8]


# The resync search copies what it searches a window at a time (memoryview has no
# find): copying a whole segment would double a scan's memory, and touch every page of
# a mapped one at once.
_SEARCH_WINDOW_BYTES = 1 << 20


def find_next_record(buf: bytes | memoryview, offset: int,
                     searched: Callable[[int], None] | None = None) -> int | None:
    """The offset of the first valid record (sync bytes, header checksum and full
    checksum all check out) strictly after `offset`, or None.

    Used after a record header that does not check out, to tell a torn tail (nothing
    valid follows) from corruption in the middle of a segment (valid records follow and
    must not be cut off). A candidate whose header checks out but whose body does not is
    passed over byte by byte, not stepped over by its length: the search runs through
    bytes whose framing is lost, where a length could be one a payload planted.

    `searched`, when given, is called with increasing offsets as the search finishes
    with the bytes before them, so that a caller scanning a file mapping can drop those
    pages (segments.scan_file). At most `_SEARCH_WINDOW_BYTES` are copied at a time.
    """
    view = memoryview(buf)
    size = len(view)
    window_start = offset + 1
    while window_start < size:
        window_end = min(window_start + _SEARCH_WINDOW_BYTES, size)
        # The window runs into the next by len(sync) - 1 bytes so that sync bytes split
        # by the boundary are found; a match starting past window_end is the next one's.
        window = bytes(view[window_start : window_end + len(_RECORD_SYNC) - 1])
        at = window.find(_RECORD_SYNC)
        while 0 <= at < window_end - window_start:
            try:
                decode_record(view, window_start + at, payload=False)
            except CorruptRecord:
                at = window.find(_RECORD_SYNC, at + 1)
                continue
            return window_start + at
        window_start = window_end
        if searched is not None:
            searched(window_start)
    return None


# ----- metadata -------------------------------------------------------------------------
# u16 content-type length, content-type (UTF-8); u16 pair count; per pair: u16 name
# length, name, u16 value length, value (UTF-8). Empty metadata is zero bytes.
_U16 = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    content_type: str = ""
    user: tuple[tuple[str, str], ...] = ()


EMPTY_META = ObjectMeta()


def encode_meta(meta: ObjectMeta) -> bytes:
    if not meta.content_type and not meta.user:
        return b""
    out = bytearray()
    content_type = meta.content_type.encode()
    out += _U16.pack(len(content_type)) + content_type
    out += _U16.pack(len(meta.user))
    for name, value in meta.user:
        name_b, value_b = name.encode(), value.encode()
        out += _U16.pack(len(name_b)) + name_b + _U16.pack(len(value_b)) + value_b
    return bytes(out)


def decode_meta(buf: bytes) -> ObjectMeta:
    if not buf:
        return EMPTY_META
    try:
        position = 0

        def take() -> str:
            nonlocal position
            (length,) = _U16.unpack_from(buf, position)
            position += 2
            if position + length > len(buf):
                raise CorruptRecord("metadata field runs past its end")
            text = buf[position : position + length].decode()
            position += length
            return text

        content_type = take()
        (count,) = _U16.unpack_from(buf, position)
        position += 2
        user = tuple((take(), take()) for _ in range(count))
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"bad metadata: {exc}") from exc
    if position != len(buf):
        raise CorruptRecord("trailing bytes after metadata")
    return ObjectMeta(content_type=content_type, user=user)


# ----- large-object reference (payload of a FLAG_LARGE record) ----------------------
# u64 object size, u64 xxh3-64 of the whole content, then the blob name (UTF-8).
_LARGE_REF = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class LargeRef:
    size: int
    content_checksum: int
    blob: str


def encode_large_ref(ref: LargeRef) -> bytes:
    return _LARGE_REF.pack(ref.size, ref.content_checksum) + ref.blob.encode()


def decode_large_ref(buf: bytes) -> LargeRef:
    if len(buf) <= _LARGE_REF.size:
        raise CorruptRecord("large-object reference too short")
    size, content_checksum = _LARGE_REF.unpack_from(buf)
    try:
        blob = buf[_LARGE_REF.size :].decode()
    except UnicodeDecodeError as exc:
        raise CorruptRecord("large-object reference name is not UTF-8") from exc
    return LargeRef(size=size, content_checksum=content_checksum, blob=blob)


def content_checksum(data: bytes | memoryview) -> int:
    return _checksum(data)


def content_hasher() -> xxhash.xxh3_64:
    return _Hasher()


# ----- entry: one record's summary (footer table row and index value) ---------------
# offset size field
#      0    1 flags (u8), as in the record
#      1    2 metadata length M (u16)
#      3    4 record offset in its segment (u32)
#      7    4 record length (u32)
#     11    8 object size (u64): payload length, or LargeRef.size
#     19    8 seq (u64)
#     27    8 last-modified, unix ms (u64)
#     35    8 record checksum (u64)
#     43    2 ETag part count (u16)
#     45   16 ETag MD5
#     61    M metadata, as in the record
_ENTRY = struct.Struct("<BHIIQQQQH16s")
ENTRY_BYTES = _ENTRY.size


# Location and Entry are NamedTuples, not dataclasses: one is built per object read on
# the hot path, and a tuple is about three times cheaper to construct than a frozen
# dataclass. They are still typed and immutable.
class Location(NamedTuple):
    segment_id: int
    offset: int
    length: int
    checksum: int


class Entry(NamedTuple):
    """What the index knows about one key: where its record is, and its summary."""

    location: Location
    flags: int
    size: int
    seq: int
    mtime_ms: int
    parts: int
    md5: bytes
    meta: bytes

    @property
    def etag(self) -> str:
        digest = self.md5.hex()
        return f"{digest}-{self.parts}" if self.parts else digest

    @property
    def is_tombstone(self) -> bool:
        return bool(self.flags & FLAG_TOMBSTONE)


def entry_for_record(record: Record, location: Location, size: int) -> Entry:
    return Entry(location=location, flags=record.flags, size=size, seq=record.seq,
                 mtime_ms=record.mtime_ms, parts=record.parts, md5=record.md5,
                 meta=record.meta)


def _pack_entry(entry: Entry) -> bytes:
    loc = entry.location
    return _ENTRY.pack(entry.flags, len(entry.meta), loc.offset, loc.length, entry.size,
                       entry.seq, entry.mtime_ms, loc.checksum, entry.parts, entry.md5)


def _unpack_entry(buf: bytes, position: int, segment_id: int) -> tuple[Entry, int]:
    (flags, meta_len, offset, length, size, seq, mtime_ms, checksum, parts,
     md5) = _ENTRY.unpack_from(buf, position)
    start = position + ENTRY_BYTES
    end = start + meta_len
    if end > len(buf) or flags & ~FLAGS_KNOWN:
        raise CorruptionError("entry runs past its end or has unknown flags")
    entry = Entry(Location(segment_id, offset, length, checksum), flags, size, seq,
                  mtime_ms, parts, md5, buf[start:end])
    return entry, end


# Index value: u32 segment id, then the entry (its metadata runs to the value's end).
_SEGMENT_ID = struct.Struct("<I")


def encode_index_value(entry: Entry) -> bytes:
    return _SEGMENT_ID.pack(entry.location.segment_id) + _pack_entry(entry) + entry.meta


_INDEX_VALUE = struct.Struct("<IBHIIQQQQH16s")
INDEX_VALUE_FIXED_BYTES = _INDEX_VALUE.size


def decode_index_value(buf: bytes) -> Entry:
    """Decode an index value (one unpack: this runs once per object read)."""
    _check_index_value_size(buf)
    (segment_id, flags, meta_len, offset, length, size, seq, mtime_ms, checksum, parts,
     md5) = _INDEX_VALUE.unpack_from(buf)
    _check_index_value(buf, flags, meta_len)
    meta = buf[INDEX_VALUE_FIXED_BYTES:] if meta_len else b""
    return Entry(Location(segment_id, offset, length, checksum), flags, size, seq, mtime_ms,
                 parts, md5, meta)


# The fields of an index value a batch locate needs (decode_index_location).
_INDEX_LOCATION = struct.Struct("<IBHIIQ16xQ")


def decode_index_location(buf: bytes) -> tuple[int, int, int, int, int, int]:
    """(segment id, flags, record offset, record length, object size, record checksum)
    of an index value, checked as decode_index_value checks it, without building an
    Entry: a batch locate runs this for every object a client on the gateway's machine
    reads."""
    _check_index_value_size(buf)
    segment_id, flags, meta_len, offset, length, size, checksum = \
        _INDEX_LOCATION.unpack_from(buf)
    _check_index_value(buf, flags, meta_len)
    return segment_id, flags, offset, length, size, checksum


def _check_index_value_size(buf: bytes) -> None:
    if len(buf) < INDEX_VALUE_FIXED_BYTES:
        raise CorruptionError("index value too short")


def _check_index_value(buf: bytes, flags: int, meta_len: int) -> None:
    if INDEX_VALUE_FIXED_BYTES + meta_len != len(buf) or flags & ~FLAGS_KNOWN:
        raise CorruptionError("index value length or flags invalid")


# ----- footer ---------------------------------------------------------------------------
# Table: per record, sorted by key then seq: u16 key length, key, entry (above).
# Trailer, the last 48 bytes of a sealed segment:
# offset size field
#      0    8 magic b"PTRLFTR\0"
#      8    2 version (u16) = 1
#     10    2 reserved = 0
#     12    4 entry count (u32)
#     16    8 table offset (u64) = end of the record area
#     24    8 table length (u64)
#     32    8 xxh3-64 of the table
#     40    8 xxh3-64 of trailer bytes 0..40
FOOTER_MAGIC = b"PTRLFTR\x00"
_TRAILER = struct.Struct("<8sHHIQQQ")
TRAILER_BYTES = _TRAILER.size + 8


@dataclass(frozen=True, slots=True)
class FooterEntry:
    key: bytes
    entry: Entry


@dataclass(frozen=True, slots=True)
class Trailer:
    entry_count: int
    table_offset: int
    table_length: int
    table_checksum: int


def encode_footer(entries: Sequence[FooterEntry], table_offset: int) -> bytes:
    """Footer bytes (table + trailer) for a segment whose records end at `table_offset`."""
    table = bytearray()
    for item in sorted(entries, key=lambda e: (e.key, e.entry.seq)):
        table += _U16.pack(len(item.key)) + item.key + _pack_entry(item.entry)
        table += item.entry.meta
    body = _TRAILER.pack(FOOTER_MAGIC, FORMAT_VERSION, 0, len(entries), table_offset,
                         len(table), _checksum(table))
    return bytes(table) + body + _checksum(body).to_bytes(8, "little")


def decode_trailer(buf: bytes | memoryview) -> Trailer:
    """Decode the last TRAILER_BYTES of a sealed segment."""
    if len(buf) != TRAILER_BYTES:
        raise CorruptSegment(f"trailer must be {TRAILER_BYTES} bytes, got {len(buf)}")
    body = bytes(buf[: _TRAILER.size])
    magic, version, _, count, table_offset, table_length, table_checksum = (
        _TRAILER.unpack(body))
    if magic != FOOTER_MAGIC:
        raise CorruptSegment("bad footer magic (segment not sealed?)")
    if int.from_bytes(buf[_TRAILER.size :], "little") != _checksum(body):
        raise CorruptSegment("footer trailer checksum mismatch")
    if version != FORMAT_VERSION:
        raise CorruptSegment(f"unsupported footer version {version}")
    if table_offset < SEGMENT_HEADER_BYTES:
        raise CorruptSegment("footer table offset inside the header")
    return Trailer(count, table_offset, table_length, table_checksum)


def decode_footer_table(buf: bytes, trailer: Trailer, segment_id: int) -> list[FooterEntry]:
    if len(buf) != trailer.table_length:
        raise CorruptSegment("footer table length mismatch")
    if _checksum(buf) != trailer.table_checksum:
        raise CorruptSegment("footer table checksum mismatch")
    entries: list[FooterEntry] = []
    position = 0
    try:
        for _ in range(trailer.entry_count):
            (key_len,) = _U16.unpack_from(buf, position)
            key = buf[position + 2 : position + 2 + key_len]
            if len(key) != key_len:
                raise CorruptSegment("footer key runs past the table")
            entry, position = _unpack_entry(buf, position + 2 + key_len, segment_id)
            if entry.location.offset + entry.location.length > trailer.table_offset:
                raise CorruptSegment("footer entry points past the record area")
            entries.append(FooterEntry(bytes(key), entry))
    except (struct.error, CorruptionError) as exc:
        raise CorruptSegment(f"bad footer table: {exc}") from exc
    if position != len(buf):
        raise CorruptSegment("footer table has trailing bytes")
    return entries


def iter_records(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, Record]]:
    """Records back to back in buf[start:end]. Raises on the first bad one."""
    view = memoryview(buf)[:end]
    position = start
    while position < end:
        record = decode_record(view, position)
        yield position, record
        position += record.length


# ----- index schema: bucket and segment rows ------------------------------------------
# Bucket row value: u32 bucket id (index-local), u64 created (unix ms), u64 seq of the
# bucket's creation record, u8 flags (0x01 public-read).
_BUCKET_ROW = struct.Struct("<IQQB")
BUCKET_PUBLIC_READ = 0x01


@dataclass(frozen=True, slots=True)
class BucketRow:
    bucket_id: int
    created_ms: int
    seq: int
    flags: int = 0


def encode_bucket_row(row: BucketRow) -> bytes:
    return _BUCKET_ROW.pack(row.bucket_id, row.created_ms, row.seq, row.flags)


def decode_bucket_row(buf: bytes) -> BucketRow:
    if len(buf) != _BUCKET_ROW.size:
        raise CorruptionError("bad bucket row")
    return BucketRow(*_BUCKET_ROW.unpack(buf))


# Segment row value:
# offset size field
#      0    1 state: 1 active, 2 sealed, 3 compacting (output not yet switched), 4 dead
#      1    1 flags: 0x01 uploaded (the backend holds the sealed segment)
#      2    8 indexed bytes: for an active segment, the end of the last record reflected
#             in the index (recovery replays from here); for a sealed one, its file size
#     10    8 live bytes (records the index points at, and tombstones kept)
#     18    8 dead bytes (records overwritten or deleted)
#     26    8 lowest seq of a record in the segment (u64 max if none)
#     34    8 highest seq of a record in the segment (0 if none)
#     42    8 created (unix ms)
_SEGMENT_ROW = struct.Struct("<BBQQQQQQ")
SEGMENT_ACTIVE, SEGMENT_SEALED, SEGMENT_COMPACTING, SEGMENT_DEAD = 1, 2, 3, 4
SEGMENT_UPLOADED = 0x01
SEQ_NONE = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class SegmentRow:
    segment_id: int
    state: int
    flags: int = 0
    indexed_bytes: int = SEGMENT_HEADER_BYTES
    live_bytes: int = 0
    dead_bytes: int = 0
    min_seq: int = SEQ_NONE
    max_seq: int = 0
    created_ms: int = 0

    @property
    def dead_fraction(self) -> float:
        total = self.live_bytes + self.dead_bytes
        return self.dead_bytes / total if total else 0.0


def encode_segment_row(row: SegmentRow) -> bytes:
    return _SEGMENT_ROW.pack(row.state, row.flags, row.indexed_bytes, row.live_bytes,
                             row.dead_bytes, row.min_seq, row.max_seq, row.created_ms)


def decode_segment_row(segment_id: int, buf: bytes) -> SegmentRow:
    if len(buf) != _SEGMENT_ROW.size:
        raise CorruptionError("bad segment row")
    state, flags, indexed, live, dead, min_seq, max_seq, created = _SEGMENT_ROW.unpack(buf)
    if state not in (SEGMENT_ACTIVE, SEGMENT_SEALED, SEGMENT_COMPACTING, SEGMENT_DEAD):
        raise CorruptionError(f"bad segment state {state}")
    return SegmentRow(segment_id, state, flags, indexed, live, dead, min_seq, max_seq, created)


def segment_blob_name(segment_id: int) -> str:
    return f"segments/{segment_id:016x}.seg"


def segment_id_from_blob_name(name: str) -> int | None:
    prefix, suffix = "segments/", ".seg"
    stem = name[len(prefix) : -len(suffix)]
    # Only what segment_blob_name writes: int(stem, 16) alone would also take "0x",
    # signs, spaces, "_", uppercase and non-ASCII digits, mapping a foreign blob to an id.
    if not (name.startswith(prefix) and name.endswith(suffix) and len(stem) == 16
            and all(c in "0123456789abcdef" for c in stem)):
        return None
    return int(stem, 16)
