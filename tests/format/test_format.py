"""On-disk format v1 (petrel/format.py): round trips for every encoder/decoder pair, and
property tests for every decoder that reads untrusted bytes.

The contract under test (STYLE habit 3, docs/format.md): a decoder given bytes from disk,
a backend or the index either raises `CorruptionError` (or a subclass) or returns a value.
It never leaks another exception (struct.error, IndexError, UnicodeDecodeError,
ValueError), and a checksummed structure (segment header, record, trailer, footer table)
never decodes mutated bytes to anything but the original value.

Structures with no checksum of their own (metadata, large-object reference, index value,
bucket and segment rows) cannot detect a flipped bit; for those the properties are "only
CorruptionError escapes" and "the decoder accepts only what the encoder produces"
(re-encoding a decoded value gives back the same bytes). Metadata and the large-object
reference live inside a record, whose checksum covers them: that is tested too.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petrel import format as fmt
from petrel import segments
from petrel.errors import CorruptionError

T = TypeVar("T")

# Small example counts keep the whole file at a few seconds; the strategies aim at the
# interesting bytes (magic-prefixed input, valid encodings mutated) instead of volume.
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
MD5 = st.binary(min_size=16, max_size=16)
FLAGS = st.integers(0, fmt.FLAGS_KNOWN)
# The first bytes of every record: magic (u16 LE) and version. find_next_record seeks it.
SYNC = fmt.RECORD_MAGIC.to_bytes(2, "little") + bytes([fmt.FORMAT_VERSION])


# ----- helpers ---------------------------------------------------------------------------
def corrupt_or_equal(decode: Callable[[], T], original: object) -> T | None:
    """Run `decode`: CorruptionError is fine (None); any other exception propagates and
    fails the test; a value must equal `original`."""
    try:
        value = decode()
    except CorruptionError:
        return None
    assert value == original
    return value


def corrupt_or_value(decode: Callable[[], T]) -> T | None:
    """Run `decode`: CorruptionError gives None; any other exception fails the test."""
    try:
        return decode()
    except CorruptionError:
        return None


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def mutation(draw: st.DrawFn, encoded: bytes) -> tuple[str, bytes]:
    """(kind, bytes): `encoded` with one bit flipped, one byte overwritten with a
    different value, truncated, or extended. Never equal to `encoded`."""
    kinds = ["flip", "overwrite", "truncate", "extend"] if encoded else ["extend"]
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        return kind, flip_bit(encoded, draw(st.integers(0, len(encoded) * 8 - 1)))
    if kind == "overwrite":
        index = draw(st.integers(0, len(encoded) - 1))
        delta = draw(st.integers(1, 255))
        out = bytearray(encoded)
        out[index] ^= delta
        return kind, bytes(out)
    if kind == "truncate":
        return kind, encoded[: draw(st.integers(0, len(encoded) - 1))]
    return kind, encoded + draw(st.binary(min_size=1, max_size=64))


def joined(encoded: fmt.EncodedRecord) -> bytes:
    return b"".join(encoded.parts)


def resealed(record: bytes | bytearray) -> bytes:
    """`record` with both its checksums recomputed (bytes 46..50 and the last 8), as a
    writer that got a field wrong would have written it."""
    out = bytearray(record)
    out[46:50] = (xxhash.xxh3_64_intdigest(bytes(out[:46])) & 0xFFFF_FFFF).to_bytes(4, "little")
    out[-8:] = xxhash.xxh3_64_intdigest(bytes(out[:-8])).to_bytes(8, "little")
    return bytes(out)


# ----- strategies ------------------------------------------------------------------------
segment_headers = st.builds(fmt.SegmentHeader, segment_id=U64, created_ms=U64)

object_metas = st.builds(
    fmt.ObjectMeta,
    content_type=st.text(max_size=24),
    user=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=24)), max_size=4).map(tuple),
)

large_refs = st.builds(
    fmt.LargeRef, size=U64, content_checksum=U64, blob=st.text(min_size=1, max_size=40)
)


@st.composite
def record_args(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for encode_record, shaped by flags as the engine writes them:
    a tombstone has no payload, a large record's payload is a LargeRef, a bucket
    record's key is a bare bucket name."""
    flags = draw(FLAGS)
    if flags & fmt.FLAG_BUCKET:
        key = draw(st.text(min_size=3, max_size=20)).encode()
    else:
        key = draw(st.binary(max_size=48))
    if flags & fmt.FLAG_TOMBSTONE:
        payload = b""
    elif flags & fmt.FLAG_LARGE:
        payload = fmt.encode_large_ref(draw(large_refs))
    else:
        payload = draw(st.binary(max_size=300))
    return {
        "flags": flags,
        "key": key,
        "meta": fmt.encode_meta(draw(object_metas)),
        "payload": payload,
        "seq": draw(U64),
        "mtime_ms": draw(U64),
        "parts": draw(U16),
        "md5": draw(MD5),
    }


def record_fields(record: fmt.Record) -> dict[str, Any]:
    return {
        "flags": record.flags,
        "key": record.key,
        "meta": record.meta,
        "payload": record.payload,
        "seq": record.seq,
        "mtime_ms": record.mtime_ms,
        "parts": record.parts,
        "md5": record.md5,
    }


locations = st.builds(fmt.Location, segment_id=U32, offset=U32, length=U32, checksum=U64)


def entries_for(location: st.SearchStrategy[fmt.Location]) -> st.SearchStrategy[fmt.Entry]:
    return st.builds(
        fmt.Entry,
        location=location,
        flags=FLAGS,
        size=U64,
        seq=U64,
        mtime_ms=U64,
        parts=U16,
        md5=MD5,
        meta=st.binary(max_size=64),
    )


entries = entries_for(locations)


@st.composite
def footers(draw: st.DrawFn) -> tuple[int, int, list[fmt.FooterEntry]]:
    """(segment id, table offset, entries) for a consistent sealed segment: every entry
    points inside the record area [SEGMENT_HEADER_BYTES, table offset)."""
    segment_id = draw(U32)
    items = []
    for _ in range(draw(st.integers(0, 6))):
        offset = draw(st.integers(fmt.SEGMENT_HEADER_BYTES, 1 << 20))
        length = draw(st.integers(fmt.RECORD_OVERHEAD_BYTES, 1 << 16))
        location = fmt.Location(segment_id, offset, length, draw(U64))
        entry = draw(entries_for(st.just(location)))
        items.append(fmt.FooterEntry(draw(st.binary(max_size=24)), entry))
    ends = [i.entry.location.offset + i.entry.location.length for i in items]
    table_offset = max([fmt.SEGMENT_HEADER_BYTES, *ends]) + draw(st.integers(0, 1000))
    return segment_id, table_offset, items


def footer_order(items: list[fmt.FooterEntry]) -> list[fmt.FooterEntry]:
    return sorted(items, key=lambda e: (e.key, e.entry.seq))


bucket_rows = st.builds(fmt.BucketRow, bucket_id=U32, created_ms=U64, seq=U64, flags=U8)

segment_rows = st.builds(
    fmt.SegmentRow,
    segment_id=U32,
    state=st.sampled_from(
        [fmt.SEGMENT_ACTIVE, fmt.SEGMENT_SEALED, fmt.SEGMENT_COMPACTING, fmt.SEGMENT_DEAD]
    ),
    flags=U8,
    indexed_bytes=U64,
    live_bytes=U64,
    dead_bytes=U64,
    min_seq=U64,
    max_seq=U64,
    created_ms=U64,
)


def prefixed(prefix: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes, half of them starting with `prefix` so decoders get past the
    magic check and exercise the parsing behind it."""
    tail = st.binary(max_size=max_size)
    return st.one_of(tail, tail.map(lambda b: prefix + b))


# ----- segment header --------------------------------------------------------------------
@FAST
@given(segment_headers)
def test_segment_header_round_trip(header: fmt.SegmentHeader) -> None:
    encoded = fmt.encode_segment_header(header)
    assert len(encoded) == fmt.SEGMENT_HEADER_BYTES == 48
    assert fmt.decode_segment_header(encoded) == header
    assert fmt.decode_segment_header(memoryview(encoded)) == header


def test_segment_header_layout() -> None:
    encoded = fmt.encode_segment_header(fmt.SegmentHeader(0x0102, 0x0304))
    assert encoded[:8] == b"PTRLSEG\x00"
    assert struct.unpack_from("<HHIQQQ", encoded, 8) == (1, 0, 48, 0x0102, 0x0304, 0)
    assert int.from_bytes(encoded[40:], "little") == xxhash.xxh3_64_intdigest(encoded[:40])


@THOROUGH
@given(segment_headers, st.data())
def test_segment_header_mutated(header: fmt.SegmentHeader, data: st.DataObject) -> None:
    encoded = fmt.encode_segment_header(header)
    kind, mutated = data.draw(mutation(encoded))
    decoded = corrupt_or_equal(lambda: fmt.decode_segment_header(mutated), header)
    if kind != "extend":  # trailing bytes after the header are the records, not it
        assert decoded is None


@FAST
@given(prefixed(fmt.SEGMENT_MAGIC, 64))
def test_segment_header_random_bytes(buf: bytes) -> None:
    corrupt_or_value(lambda: fmt.decode_segment_header(buf))


def test_segment_header_rejects_other_version_even_with_valid_checksum() -> None:
    encoded = bytearray(fmt.encode_segment_header(fmt.SegmentHeader(1, 2)))
    encoded[8] = 2
    encoded[40:] = xxhash.xxh3_64_intdigest(bytes(encoded[:40])).to_bytes(8, "little")
    with pytest.raises(fmt.CorruptSegment):
        fmt.decode_segment_header(bytes(encoded))


# ----- record ----------------------------------------------------------------------------
@THOROUGH
@given(record_args())
def test_record_round_trip(args: dict[str, Any]) -> None:
    encoded = fmt.encode_record(**args)
    buf = joined(encoded)
    assert (
        encoded.length
        == len(buf)
        == fmt.record_length(len(args["key"]), len(args["meta"]), len(args["payload"]))
    )
    record = fmt.decode_record(buf)
    assert record_fields(record) == args
    assert record.checksum == encoded.checksum
    assert record.length == len(buf)
    assert fmt.decode_meta(record.meta) == fmt.decode_meta(args["meta"])
    if args["flags"] & fmt.FLAG_LARGE and not args["flags"] & fmt.FLAG_TOMBSTONE:
        assert fmt.encode_large_ref(fmt.decode_large_ref(record.payload)) == record.payload


@FAST
@given(record_args(), st.binary(max_size=100), st.binary(max_size=100))
def test_record_decodes_at_offset_inside_larger_buffer(
    args: dict[str, Any], before: bytes, after: bytes
) -> None:
    buf = before + joined(fmt.encode_record(**args)) + after
    for view in (buf, memoryview(buf), bytearray(buf)):
        assert record_fields(fmt.decode_record(view, len(before))) == args


def test_record_layout() -> None:
    encoded = joined(
        fmt.encode_record(
            flags=fmt.FLAG_LARGE,
            key=b"bk/k",
            meta=b"MM",
            payload=b"ppp",
            seq=7,
            mtime_ms=9,
            parts=3,
            md5=bytes(range(16)),
        )
    )
    assert encoded[:3] == b"\xa9\xe3\x01"
    assert struct.unpack_from("<BHHIQQH16s", encoded, 3) == (
        fmt.FLAG_LARGE,
        4,
        2,
        3,
        7,
        9,
        3,
        bytes(range(16)),
    )
    header_checksum = xxhash.xxh3_64_intdigest(encoded[:46]) & 0xFFFF_FFFF
    assert int.from_bytes(encoded[46:50], "little") == header_checksum
    assert encoded[50:59] == b"bk/kMMppp"
    assert len(encoded) == 50 + 9 + 8
    assert int.from_bytes(encoded[-8:], "little") == xxhash.xxh3_64_intdigest(encoded[:-8])
    assert (fmt.RECORD_HEADER_BYTES, fmt.RECORD_CHECKSUM_BYTES) == (50, 8)
    assert fmt.RECORD_OVERHEAD_BYTES == 58


def test_record_parts_are_header_key_meta_payload_checksum() -> None:
    """encode_record hands the writer separate buffers (one writev), never one join."""
    encoded = fmt.encode_record(flags=0, key=b"b/k", meta=b"M", payload=b"pp", seq=1, mtime_ms=2)
    header, key, meta, payload, checksum = encoded.parts
    assert (len(header), key, meta, payload) == (50, b"b/k", b"M", b"pp")
    assert int.from_bytes(checksum, "little") == encoded.checksum
    assert encoded.length == sum(len(part) for part in encoded.parts)


def test_record_flag_values_are_frozen() -> None:
    assert (fmt.FLAG_TOMBSTONE, fmt.FLAG_LARGE, fmt.FLAG_BUCKET) == (0x01, 0x02, 0x04)
    assert fmt.FLAGS_KNOWN == 0x07


@THOROUGH
@given(record_args(), st.data())
def test_record_mutated_never_decodes_to_other_bytes(
    args: dict[str, Any], data: st.DataObject
) -> None:
    buf = joined(fmt.encode_record(**args))
    kind, mutated = data.draw(mutation(buf))
    try:
        record = fmt.decode_record(mutated)
    except fmt.TruncatedRecord:
        # A changed length field fails the header checksum: only a cut is a torn record.
        assert kind == "truncate"
        return
    except fmt.CorruptRecordBody as exc:
        assert kind in ("flip", "overwrite")
        assert mutated[: fmt.RECORD_HEADER_BYTES] == buf[: fmt.RECORD_HEADER_BYTES]
        assert exc.length == len(buf)  # the header's length, trustworthy
        return
    except fmt.CorruptRecord:
        assert kind in ("flip", "overwrite")  # losing the end of a record is always torn
        assert mutated[: fmt.RECORD_HEADER_BYTES] != buf[: fmt.RECORD_HEADER_BYTES]
        return
    assert kind == "extend"
    assert record_fields(record) == args
    assert record.length == len(buf)


@THOROUGH
@given(record_args(), st.integers(0, fmt.RECORD_HEADER_BYTES - 1), st.integers(1, 255))
def test_record_header_byte_changed_is_detected(
    args: dict[str, Any], index: int, delta: int
) -> None:
    """Even with the rest of the segment after it (so a grown length still fits), a
    changed header byte (the header checksum's included) fails the header, before any
    length in it is trusted: never a torn record, never a body error with a length."""
    buf = bytearray(joined(fmt.encode_record(**args)) + bytes(4096))
    buf[index] ^= delta
    with pytest.raises(fmt.CorruptRecord) as raised:
        fmt.decode_record(bytes(buf))
    assert type(raised.value) is fmt.CorruptRecord


@THOROUGH
@given(record_args(), st.data())
def test_record_body_byte_changed_is_a_body_error_with_the_length(
    args: dict[str, Any], data: st.DataObject
) -> None:
    buf = bytearray(joined(fmt.encode_record(**args)))
    index = data.draw(st.integers(fmt.RECORD_HEADER_BYTES, len(buf) - 1))
    buf[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(fmt.CorruptRecordBody) as raised:
        fmt.decode_record(bytes(buf) + bytes(64))
    assert raised.value.length == len(buf)


@FAST
@given(record_args(), st.data())
def test_record_torn_after_its_header_is_truncated(
    args: dict[str, Any], data: st.DataObject
) -> None:
    buf = joined(fmt.encode_record(**args))
    cut = data.draw(st.integers(fmt.RECORD_HEADER_BYTES, len(buf) - 1))
    with pytest.raises(fmt.TruncatedRecord):
        fmt.decode_record(buf[:cut])


@THOROUGH
@given(prefixed(SYNC, 200), st.integers(0, 210))
def test_record_random_bytes(buf: bytes, offset: int) -> None:
    with pytest.raises(fmt.CorruptRecord):
        fmt.decode_record(buf, offset)


@FAST
@given(record_args(), st.integers(fmt.FLAGS_KNOWN + 1, 0xFF))
def test_record_unknown_flags_rejected_with_valid_checksum(
    args: dict[str, Any], flags: int
) -> None:
    buf = bytearray(joined(fmt.encode_record(**args)))
    buf[3] = flags
    with pytest.raises(fmt.CorruptRecord, match="header checksum"):
        fmt.decode_record(bytes(buf))
    with pytest.raises(fmt.CorruptRecord, match="flags"):
        fmt.decode_record(resealed(buf))


@FAST
@given(record_args(), st.integers(2, 0xFF))
def test_record_other_version_rejected_with_valid_checksums(
    args: dict[str, Any], version: int
) -> None:
    buf = bytearray(joined(fmt.encode_record(**args)))
    buf[2] = version
    with pytest.raises(fmt.CorruptRecord, match="version"):
        fmt.decode_record(resealed(buf))


def test_record_shorter_than_framing_is_truncated() -> None:
    buf = joined(fmt.encode_record(flags=0, key=b"b/k", meta=b"", payload=b"x", seq=1, mtime_ms=1))
    for cut in range(len(buf)):
        with pytest.raises(fmt.TruncatedRecord):
            fmt.decode_record(buf[:cut])


# ----- verified_payload (the read path) -------------------------------------------------
def located(args: dict[str, Any], before: bytes, segment_id: int = 1) -> tuple[bytes, fmt.Location]:
    """`before` + the record; the Location the index would hold for it."""
    encoded = fmt.encode_record(**args)
    location = fmt.Location(segment_id, len(before), encoded.length, encoded.checksum)
    return before + joined(encoded), location


@FAST
@given(record_args(), st.binary(max_size=64), st.binary(max_size=64))
def test_verified_payload_round_trip(args: dict[str, Any], before: bytes, after: bytes) -> None:
    buf, location = located(args, before)
    buf += after
    assert fmt.verified_payload(buf, location.offset, location, args["key"]) == args["payload"]


@THOROUGH
@given(record_args(), st.binary(max_size=16), st.data())
def test_verified_payload_mutated(args: dict[str, Any], before: bytes, data: st.DataObject) -> None:
    buf, location = located(args, before)
    kind, mutated = data.draw(mutation(buf))
    payload = corrupt_or_equal(
        lambda: fmt.verified_payload(mutated, location.offset, location, args["key"]),
        args["payload"],
    )
    if kind in ("flip", "overwrite") and mutated[: len(before)] == before:
        assert payload is None  # a changed record byte is always caught
    if kind == "truncate":
        assert payload is None


@FAST
@given(record_args(), st.binary(max_size=48), st.data())
def test_verified_payload_rejects_another_key_or_location(
    args: dict[str, Any], other_key: bytes, data: st.DataObject
) -> None:
    buf, location = located(args, b"")
    if other_key != args["key"]:
        with pytest.raises(fmt.CorruptRecord):
            fmt.verified_payload(buf, 0, location, other_key)
    segment_id, offset, length, checksum = (
        location.segment_id,
        location.offset,
        location.length,
        location.checksum,
    )
    wrong = data.draw(
        st.sampled_from(
            [
                fmt.Location(segment_id, offset, length, checksum ^ 1),
                fmt.Location(segment_id, offset, length - 1, checksum),
                fmt.Location(segment_id, offset, length + 1, checksum),
                fmt.Location(segment_id, offset, 0, checksum),
            ]
        )
    )
    with pytest.raises(fmt.CorruptRecord):
        fmt.verified_payload(buf + bytes(8), 0, wrong, args["key"])


@THOROUGH
@given(
    prefixed(SYNC, 200),
    st.builds(fmt.Location, U32, st.integers(0, 220), st.integers(0, 260), U64),
    st.binary(max_size=20),
)
def test_verified_payload_random_bytes(buf: bytes, location: fmt.Location, key: bytes) -> None:
    with pytest.raises(fmt.CorruptRecord):
        fmt.verified_payload(buf, location.offset, location, key)


# ----- metadata --------------------------------------------------------------------------
@FAST
@given(object_metas)
def test_meta_round_trip(meta: fmt.ObjectMeta) -> None:
    assert fmt.decode_meta(fmt.encode_meta(meta)) == meta


def test_empty_meta_is_zero_bytes() -> None:
    assert fmt.encode_meta(fmt.EMPTY_META) == b""
    assert fmt.decode_meta(b"") is fmt.EMPTY_META


def test_meta_layout() -> None:
    meta = fmt.ObjectMeta("text/plain", (("k", "vé"),))
    assert fmt.encode_meta(meta) == (
        b"\x0a\x00text/plain" + b"\x01\x00" + b"\x01\x00k" + b"\x03\x00v\xc3\xa9"
    )


@THOROUGH
@given(object_metas, st.data())
def test_meta_mutated(meta: fmt.ObjectMeta, data: st.DataObject) -> None:
    """Metadata has no checksum of its own (the record's covers it): a mutation may
    decode to other metadata, but only ever as CorruptionError or a valid value."""
    _, mutated = data.draw(mutation(fmt.encode_meta(meta)))
    decoded = corrupt_or_value(lambda: fmt.decode_meta(mutated))
    if decoded is not None:
        assert fmt.decode_meta(fmt.encode_meta(decoded)) == decoded


@THOROUGH
@given(
    st.one_of(
        st.binary(max_size=80),
        st.lists(
            st.one_of(U16.map(lambda n: n.to_bytes(2, "little")), st.binary(max_size=6)),
            max_size=12,
        ).map(b"".join),
    )
)
def test_meta_random_bytes(buf: bytes) -> None:
    decoded = corrupt_or_value(lambda: fmt.decode_meta(buf))
    if decoded is not None:
        assert isinstance(decoded, fmt.ObjectMeta)
        assert fmt.decode_meta(fmt.encode_meta(decoded)) == decoded


def test_meta_bad_utf8_is_corruption() -> None:
    with pytest.raises(fmt.CorruptRecord):
        fmt.decode_meta(b"\x02\x00\xff\xfe\x00\x00")


# ----- large-object reference ------------------------------------------------------------
@FAST
@given(large_refs)
def test_large_ref_round_trip(ref: fmt.LargeRef) -> None:
    assert fmt.decode_large_ref(fmt.encode_large_ref(ref)) == ref


def test_large_ref_layout() -> None:
    encoded = fmt.encode_large_ref(fmt.LargeRef(5, 6, "blobs/x"))
    assert encoded == struct.pack("<QQ", 5, 6) + b"blobs/x"


@THOROUGH
@given(large_refs, st.data())
def test_large_ref_mutated(ref: fmt.LargeRef, data: st.DataObject) -> None:
    _, mutated = data.draw(mutation(fmt.encode_large_ref(ref)))
    decoded = corrupt_or_value(lambda: fmt.decode_large_ref(mutated))
    if decoded is not None:
        assert fmt.encode_large_ref(decoded) == mutated


@FAST
@given(st.binary(max_size=60))
def test_large_ref_random_bytes(buf: bytes) -> None:
    decoded = corrupt_or_value(lambda: fmt.decode_large_ref(buf))
    if decoded is not None:
        assert fmt.encode_large_ref(decoded) == buf


@THOROUGH
@given(large_refs, object_metas, st.data())
def test_meta_and_large_ref_are_guarded_by_the_record_checksum(
    ref: fmt.LargeRef, meta: fmt.ObjectMeta, data: st.DataObject
) -> None:
    """Inside a record, a mutated metadata or LargeRef byte is caught by decode_record."""
    buf = joined(
        fmt.encode_record(
            flags=fmt.FLAG_LARGE,
            key=b"b/k",
            meta=fmt.encode_meta(meta),
            payload=fmt.encode_large_ref(ref),
            seq=1,
            mtime_ms=2,
        )
    )
    _, mutated = data.draw(mutation(buf))
    record = corrupt_or_value(lambda: fmt.decode_record(mutated))
    if record is not None:
        assert fmt.decode_meta(record.meta) == meta
        assert fmt.decode_large_ref(record.payload) == ref


def test_content_checksum_matches_hasher() -> None:
    hasher = fmt.content_hasher()
    hasher.update(b"abc")
    hasher.update(b"def")
    assert hasher.intdigest() == fmt.content_checksum(b"abcdef")
    assert fmt.content_checksum(memoryview(b"abcdef")) == fmt.content_checksum(b"abcdef")


# ----- entry / index value ---------------------------------------------------------------
@FAST
@given(entries)
def test_index_value_round_trip(entry: fmt.Entry) -> None:
    encoded = fmt.encode_index_value(entry)
    assert len(encoded) == 4 + fmt.ENTRY_BYTES + len(entry.meta)
    assert fmt.decode_index_value(encoded) == entry


def test_entry_layout() -> None:
    assert fmt.ENTRY_BYTES == 61
    entry = fmt.Entry(
        fmt.Location(9, 100, 200, 0xABC), fmt.FLAG_TOMBSTONE, 5, 6, 7, 2, bytes(range(16)), b"MM"
    )
    encoded = fmt.encode_index_value(entry)
    assert struct.unpack_from("<IBHIIQQQQH16s", encoded) == (
        9,
        fmt.FLAG_TOMBSTONE,
        2,
        100,
        200,
        5,
        6,
        7,
        0xABC,
        2,
        bytes(range(16)),
    )
    assert encoded[4 + 61 :] == b"MM"


@pytest.mark.parametrize(("parts", "etag"), [(0, "00" * 16), (3, "00" * 16 + "-3")])
def test_entry_etag(parts: int, etag: str) -> None:
    entry = fmt.Entry(fmt.Location(1, 48, 58, 0), 0, 0, 1, 1, parts, bytes(16), b"")
    assert entry.etag == etag
    assert not entry.is_tombstone


@FAST
@given(record_args(), U32, U32)
def test_entry_for_record(args: dict[str, Any], segment_id: int, offset: int) -> None:
    record = fmt.decode_record(joined(fmt.encode_record(**args)))
    location = fmt.Location(segment_id, offset, record.length, record.checksum)
    entry = fmt.entry_for_record(record, location, len(record.payload))
    assert (entry.flags, entry.seq, entry.mtime_ms, entry.parts, entry.md5, entry.meta) == (
        args["flags"],
        args["seq"],
        args["mtime_ms"],
        args["parts"],
        args["md5"],
        args["meta"],
    )
    assert entry.is_tombstone == bool(args["flags"] & fmt.FLAG_TOMBSTONE)
    assert fmt.decode_index_value(fmt.encode_index_value(entry)) == entry


@THOROUGH
@given(entries, st.data())
def test_index_value_mutated(entry: fmt.Entry, data: st.DataObject) -> None:
    _, mutated = data.draw(mutation(fmt.encode_index_value(entry)))
    decoded = corrupt_or_value(lambda: fmt.decode_index_value(mutated))
    if decoded is not None:
        assert fmt.encode_index_value(decoded) == mutated


@FAST
@given(st.binary(max_size=140))
def test_index_value_random_bytes(buf: bytes) -> None:
    decoded = corrupt_or_value(lambda: fmt.decode_index_value(buf))
    if decoded is not None:
        assert fmt.encode_index_value(decoded) == buf


# ----- footer ----------------------------------------------------------------------------
def decode_footer(
    footer: bytes, table_offset: int, segment_id: int
) -> tuple[fmt.Trailer, list[fmt.FooterEntry]]:
    """What a reader does with a sealed segment's footer bytes (segments.read_footer,
    with the footer starting at `table_offset` of the file)."""
    trailer = fmt.decode_trailer(footer[-fmt.TRAILER_BYTES :])
    if trailer.table_offset + trailer.table_length + fmt.TRAILER_BYTES != (
        table_offset + len(footer)
    ):
        raise fmt.CorruptSegment("footer does not end the file")
    table = footer[: trailer.table_length]
    return trailer, fmt.decode_footer_table(table, trailer, segment_id)


@FAST
@given(footers())
def test_footer_round_trip(footer_args: tuple[int, int, list[fmt.FooterEntry]]) -> None:
    segment_id, table_offset, items = footer_args
    footer = fmt.encode_footer(items, table_offset)
    trailer = fmt.decode_trailer(footer[-fmt.TRAILER_BYTES :])
    table = footer[: -fmt.TRAILER_BYTES]
    assert trailer == fmt.Trailer(
        len(items), table_offset, len(table), xxhash.xxh3_64_intdigest(table)
    )
    assert fmt.decode_footer_table(table, trailer, segment_id) == footer_order(items)
    assert decode_footer(footer, table_offset, segment_id) == (trailer, footer_order(items))


def test_footer_layout() -> None:
    entry = fmt.Entry(fmt.Location(3, 48, 60, 1), 0, 2, 1, 1, 0, bytes(16), b"")
    items = [fmt.FooterEntry(b"b/z", entry), fmt.FooterEntry(b"b/a", entry)]
    footer = fmt.encode_footer(items, 108)
    row = fmt.encode_index_value(entry)[4:]
    assert footer[: -fmt.TRAILER_BYTES] == b"\x03\x00b/a" + row + b"\x03\x00b/z" + row
    trailer = footer[-fmt.TRAILER_BYTES :]
    assert trailer[:8] == b"PTRLFTR\x00"
    table_length = 2 * (5 + fmt.ENTRY_BYTES)
    assert struct.unpack_from("<HHIQQ", trailer, 8) == (1, 0, 2, 108, table_length)
    assert int.from_bytes(trailer[40:], "little") == xxhash.xxh3_64_intdigest(trailer[:40])


@THOROUGH
@given(footers(), st.data())
def test_footer_mutated(
    footer_args: tuple[int, int, list[fmt.FooterEntry]], data: st.DataObject
) -> None:
    segment_id, table_offset, items = footer_args
    footer = fmt.encode_footer(items, table_offset)
    _, mutated = data.draw(mutation(footer))
    trailer = fmt.decode_trailer(footer[-fmt.TRAILER_BYTES :])
    assert (
        corrupt_or_equal(
            lambda: decode_footer(mutated, table_offset, segment_id), (trailer, footer_order(items))
        )
        is None
    )


@THOROUGH
@given(footers(), st.data())
def test_footer_table_mutated_behind_a_matching_checksum(
    footer_args: tuple[int, int, list[fmt.FooterEntry]], data: st.DataObject
) -> None:
    """The parser behind the checksum: a table that checks out against its trailer but
    does not parse (a writer bug, or a trailer rewritten to match) is CorruptSegment."""
    segment_id, table_offset, items = footer_args
    table = fmt.encode_footer(items, table_offset)[: -fmt.TRAILER_BYTES]
    _, mutated = data.draw(mutation(table))
    count = data.draw(st.sampled_from([len(items), len(items) + 1, max(0, len(items) - 1)]))
    trailer = fmt.Trailer(count, table_offset, len(mutated), xxhash.xxh3_64_intdigest(mutated))
    decoded = corrupt_or_value(lambda: fmt.decode_footer_table(mutated, trailer, segment_id))
    if decoded is not None:
        assert len(decoded) == count
        for item in decoded:
            assert item.entry.location.offset + item.entry.location.length <= table_offset
            assert item.entry.flags & ~fmt.FLAGS_KNOWN == 0


@THOROUGH
@given(st.binary(max_size=300), U32, st.integers(0, 1 << 20), U32)
def test_footer_table_random_bytes(
    table: bytes, count: int, table_offset: int, segment_id: int
) -> None:
    trailer = fmt.Trailer(count, table_offset, len(table), xxhash.xxh3_64_intdigest(table))
    decoded = corrupt_or_value(lambda: fmt.decode_footer_table(table, trailer, segment_id))
    if decoded is not None:
        assert len(decoded) == count
        assert all(item.entry.flags & ~fmt.FLAGS_KNOWN == 0 for item in decoded)


def test_footer_table_rejects_entry_past_record_area() -> None:
    entry = fmt.Entry(fmt.Location(3, 48, 60, 1), 0, 2, 1, 1, 0, bytes(16), b"")
    footer = fmt.encode_footer([fmt.FooterEntry(b"k", entry)], 100)  # 48 + 60 > 100
    trailer = fmt.decode_trailer(footer[-fmt.TRAILER_BYTES :])
    with pytest.raises(fmt.CorruptSegment, match="past the record area"):
        fmt.decode_footer_table(footer[: -fmt.TRAILER_BYTES], trailer, 3)


@pytest.mark.parametrize("flags", [0x08, 0x80, 0xFF])
def test_footer_table_rejects_unknown_entry_flags(flags: int) -> None:
    entry = fmt.Entry(fmt.Location(3, 48, 60, 1), 0, 2, 1, 1, 0, bytes(16), b"")
    table = bytearray(fmt.encode_footer([fmt.FooterEntry(b"k", entry)], 108)[: -fmt.TRAILER_BYTES])
    table[3] = flags  # u16 key length, 1-byte key, then the entry's flags byte
    trailer = fmt.Trailer(1, 108, len(table), xxhash.xxh3_64_intdigest(bytes(table)))
    with pytest.raises(fmt.CorruptSegment):
        fmt.decode_footer_table(bytes(table), trailer, 3)


@FAST
@given(prefixed(fmt.FOOTER_MAGIC, 60))
def test_trailer_random_bytes(buf: bytes) -> None:
    with pytest.raises(fmt.CorruptSegment):
        fmt.decode_trailer(buf)


@FAST
@given(U32, st.integers(0, fmt.SEGMENT_HEADER_BYTES - 1))
def test_trailer_rejects_table_offset_inside_header(count: int, table_offset: int) -> None:
    body = struct.pack(
        "<8sHHIQQQ", fmt.FOOTER_MAGIC, 1, 0, count, table_offset, 0, xxhash.xxh3_64_intdigest(b"")
    )
    buf = body + xxhash.xxh3_64_intdigest(body).to_bytes(8, "little")
    with pytest.raises(fmt.CorruptSegment):
        fmt.decode_trailer(buf)


# ----- bucket and segment rows -----------------------------------------------------------
@FAST
@given(bucket_rows)
def test_bucket_row_round_trip(row: fmt.BucketRow) -> None:
    encoded = fmt.encode_bucket_row(row)
    assert len(encoded) == 21
    assert fmt.decode_bucket_row(encoded) == row


@THOROUGH
@given(st.one_of(st.binary(max_size=40), bucket_rows.map(fmt.encode_bucket_row)), st.data())
def test_bucket_row_untrusted(buf: bytes, data: st.DataObject) -> None:
    _, mutated = data.draw(mutation(buf))
    for candidate in (buf, mutated):
        decoded = corrupt_or_value(lambda c=candidate: fmt.decode_bucket_row(c))
        if decoded is not None:
            assert fmt.encode_bucket_row(decoded) == candidate


@FAST
@given(segment_rows)
def test_segment_row_round_trip(row: fmt.SegmentRow) -> None:
    encoded = fmt.encode_segment_row(row)
    assert len(encoded) == 50
    assert fmt.decode_segment_row(row.segment_id, encoded) == row


def test_segment_row_defaults() -> None:
    row = fmt.SegmentRow(segment_id=1, state=fmt.SEGMENT_ACTIVE)
    assert row.indexed_bytes == fmt.SEGMENT_HEADER_BYTES
    assert (row.min_seq, row.max_seq) == (fmt.SEQ_NONE, 0)
    assert row.dead_fraction == 0.0
    assert fmt.SegmentRow(1, fmt.SEGMENT_SEALED, live_bytes=1, dead_bytes=3).dead_fraction == 0.75
    assert fmt.decode_segment_row(1, fmt.encode_segment_row(row)) == row


@THOROUGH
@given(st.one_of(st.binary(max_size=60), segment_rows.map(fmt.encode_segment_row)), st.data())
def test_segment_row_untrusted(buf: bytes, data: st.DataObject) -> None:
    _, mutated = data.draw(mutation(buf))
    for candidate in (buf, mutated):
        decoded = corrupt_or_value(lambda c=candidate: fmt.decode_segment_row(7, c))
        if decoded is not None:
            assert decoded.segment_id == 7
            assert decoded.state in (1, 2, 3, 4)
            assert fmt.encode_segment_row(decoded) == candidate


# ----- segment blob names ----------------------------------------------------------------
@FAST
@given(U64)
def test_segment_blob_name_round_trip(segment_id: int) -> None:
    name = fmt.segment_blob_name(segment_id)
    assert name == f"segments/{segment_id:016x}.seg"
    assert fmt.segment_id_from_blob_name(name) == segment_id


@pytest.mark.parametrize(
    "name",
    [
        "segments/0x00000000000001.seg",  # int(..., 16) accepts a 0x prefix
        "segments/ 000000000000001.seg",  # ... surrounding whitespace
        "segments/+000000000000001.seg",  # ... a sign
        "segments/00000000_0000001.seg",  # ... underscores
        "segments/000000000000000A.seg",  # the encoder writes lowercase only
        "segments/\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10"
        "\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff11.seg",  # full-width digits
        "segments/0000000000000001.seg.tmp",
        "segments/000000000000001.seg",
        "other/0000000000000001.seg",
    ],
)
def test_segment_id_from_foreign_blob_name_is_none(name: str) -> None:
    assert fmt.segment_id_from_blob_name(name) is None


@FAST
@given(
    st.one_of(
        st.text(max_size=40), st.text(min_size=16, max_size=16).map(lambda s: f"segments/{s}.seg")
    )
)
def test_segment_id_from_blob_name_accepts_only_encoder_output(name: str) -> None:
    segment_id = fmt.segment_id_from_blob_name(name)
    if segment_id is not None:
        assert fmt.segment_blob_name(segment_id) == name


# ----- scanning: find_next_record, iter_records ------------------------------------------
@st.composite
def record_runs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, dict[str, Any]]]]:
    """(bytes, [(offset, args)]) for 1..5 records back to back after a segment header."""
    buf = fmt.encode_segment_header(draw(segment_headers))
    placed = []
    for args in draw(st.lists(record_args(), min_size=1, max_size=5)):
        placed.append((len(buf), args))
        buf += joined(fmt.encode_record(**args))
    return buf, placed


@FAST
@given(record_runs())
def test_iter_records_round_trip(run: tuple[bytes, list[tuple[int, dict[str, Any]]]]) -> None:
    buf, placed = run
    found = list(fmt.iter_records(buf, fmt.SEGMENT_HEADER_BYTES, len(buf)))
    assert [(offset, record_fields(r)) for offset, r in found] == placed
    assert list(fmt.iter_records(memoryview(buf), fmt.SEGMENT_HEADER_BYTES, len(buf))) == found


@FAST
@given(record_runs(), st.integers(1, 57))
def test_iter_records_stops_at_end_not_buffer_length(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], cut: int
) -> None:
    buf, placed = run
    last_offset = placed[-1][0]
    found = list(fmt.iter_records(buf, fmt.SEGMENT_HEADER_BYTES, last_offset))
    assert [offset for offset, _ in found] == [offset for offset, _ in placed[:-1]]
    with pytest.raises(fmt.TruncatedRecord):  # `end` cuts the last record short
        list(fmt.iter_records(buf, fmt.SEGMENT_HEADER_BYTES, last_offset + cut))


@THOROUGH
@given(record_runs(), st.data())
def test_iter_records_mutated_yields_only_original_records(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], data: st.DataObject
) -> None:
    buf, placed = run
    header, records = buf[: fmt.SEGMENT_HEADER_BYTES], buf[fmt.SEGMENT_HEADER_BYTES :]
    _, mutated_records = data.draw(mutation(records))
    mutated = header + mutated_records
    originals = dict(placed)
    yielded = []
    try:
        for offset, record in fmt.iter_records(mutated, fmt.SEGMENT_HEADER_BYTES, len(mutated)):
            assert record_fields(record) == originals[offset]
            yielded.append(offset)
    except fmt.CorruptRecord:
        pass
    else:  # only a cut at a record boundary ends cleanly
        ends = [offset for offset, _ in placed[1:]] + [len(buf)]
        assert len(mutated) in [fmt.SEGMENT_HEADER_BYTES, *ends]
    assert yielded == [offset for offset, _ in placed[: len(yielded)]]


@THOROUGH
@given(record_args(), st.binary(min_size=1, max_size=200), st.data())
def test_find_next_record_after_garbage(
    args: dict[str, Any], garbage: bytes, data: st.DataObject
) -> None:
    """Garbage (possibly holding the record sync bytes) is skipped up to the next valid
    record; `offset` itself is never returned."""
    sync_at = data.draw(st.integers(0, len(garbage)))
    garbage = garbage[:sync_at] + SYNC + garbage[sync_at:]
    record = joined(fmt.encode_record(**args))
    buf = garbage + record + garbage
    assert fmt.find_next_record(buf, 0) == len(garbage)
    assert fmt.find_next_record(memoryview(buf), 0) == len(garbage)
    assert fmt.find_next_record(buf, len(garbage)) is None


@THOROUGH
@given(record_runs(), st.data())
def test_find_next_record_skips_a_corrupt_record_mid_segment(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], data: st.DataObject
) -> None:
    buf, placed = run
    # Append a known-good record so there is always one after the damaged one.
    tail_offset = len(buf)
    buf += joined(
        fmt.encode_record(flags=0, key=b"b/last", meta=b"", payload=b"z", seq=1, mtime_ms=1)
    )
    bad_index = data.draw(st.integers(0, len(placed) - 1))
    bad_offset = placed[bad_index][0]
    next_offset = placed[bad_index + 1][0] if bad_index + 1 < len(placed) else tail_offset
    bit = data.draw(st.integers(bad_offset * 8, next_offset * 8 - 1))
    damaged = flip_bit(buf, bit)
    with pytest.raises(fmt.CorruptRecord):
        fmt.decode_record(damaged, bad_offset)
    assert fmt.find_next_record(damaged, bad_offset) == next_offset


@THOROUGH
@given(record_runs(), st.data())
def test_find_next_record_none_on_torn_tail(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], data: st.DataObject
) -> None:
    buf, placed = run
    last_offset = placed[-1][0]
    torn = buf[: data.draw(st.integers(last_offset, len(buf) - 1))]
    with pytest.raises(fmt.TruncatedRecord):
        fmt.decode_record(torn, last_offset)
    assert fmt.find_next_record(torn, last_offset) is None
    for offset, _ in placed[:-1]:  # earlier records still decode and are still found
        assert fmt.find_next_record(torn, offset - 1) == offset


@THOROUGH
@given(prefixed(SYNC, 300), st.integers(-1, 300))
def test_find_next_record_random_bytes(buf: bytes, offset: int) -> None:
    found = fmt.find_next_record(buf, offset)
    if found is not None:
        assert found > offset
        fmt.decode_record(buf, found)


@pytest.mark.parametrize("shift", [-3, -2, -1, 0, 1])
def test_find_next_record_across_search_windows(shift: int) -> None:
    """The search copies one window at a time: a record is found wherever it starts
    relative to a window's end (its sync bytes straddle it at -2 and -1), and
    `searched` reports each finished window."""
    window = fmt._SEARCH_WINDOW_BYTES
    record = joined(fmt.encode_record(flags=0, key=b"b/k", meta=b"", payload=b"z", seq=1,
                                      mtime_ms=1))
    at = 1 + window + shift  # searching from offset 0, the first window is [1, 1 + window)
    buf = bytes(at) + record + bytes(100)
    searched: list[int] = []
    assert fmt.find_next_record(buf, 0, searched.append) == at
    assert fmt.find_next_record(memoryview(buf), 0) == at
    assert searched == ([] if at < 1 + window else [1 + window])
    searched.clear()
    assert fmt.find_next_record(buf, at, searched.append) is None
    assert searched == [len(buf)]


# ----- scanning a segment: segments.scan_records ----------------------------------------
# Recovery (replay of an active segment's tail), sealing and rebuild all scan with it. A
# payload is user bytes and may hold a complete encoded record with any key and seq:
# scanning must only ever find records at the framing's own boundaries.
LAST: dict[str, Any] = {
    "flags": 0,
    "key": b"b/last",
    "meta": b"",
    "payload": b"z",
    "seq": 1,
    "mtime_ms": 1,
    "parts": 0,
    "md5": fmt.NO_MD5,
}


def scan(buf: bytes) -> segments.ScanResult:
    return segments.scan_records(buf, fmt.SEGMENT_HEADER_BYTES, len(buf), payloads=True)


def scanned(result: segments.ScanResult) -> list[tuple[int, dict[str, Any]]]:
    return [(offset, record_fields(record)) for offset, record in result.records]


def carrier(args: dict[str, Any], inner: bytes, before: bytes, after: bytes) -> bytes:
    """A record (built from `args`) whose payload holds the encoded record `inner`."""
    return joined(fmt.encode_record(**{**args, "payload": before + inner + after}))


def planted_record() -> bytes:
    return joined(
        fmt.encode_record(flags=0, key=b"victim/k", meta=b"", payload=b"x", seq=2**63, mtime_ms=1)
    )


def test_scan_ignores_a_record_embedded_in_a_torn_payload() -> None:
    """A crash tears the last append after the record it carries in its payload: the
    resync search would find that record, but the torn record's header checks out, so
    the scan cuts there and never searches inside it."""
    inner = planted_record()
    outer = carrier(dict(LAST, key=b"mallory/k"), inner, b"pad", bytes(500))
    head = fmt.encode_segment_header(fmt.SegmentHeader(1, 1))
    torn = head + outer[: len(outer) - 100]
    embedded_at = len(head) + fmt.RECORD_HEADER_BYTES + len(b"mallory/k") + len(b"pad")
    assert fmt.find_next_record(torn, len(head)) == embedded_at  # the hazard is real
    result = scan(torn)
    assert result.records == []
    assert result.corrupt_ranges == []
    assert result.valid_end == len(head)


def test_scan_skips_a_body_corrupt_record_whole() -> None:
    inner = planted_record()
    outer = bytearray(carrier(dict(LAST, key=b"mallory/k"), inner, b"pad", bytes(50)))
    outer[-1] ^= 0x10  # its checksum: the header still checks out
    head = fmt.encode_segment_header(fmt.SegmentHeader(1, 1))
    last = joined(fmt.encode_record(**LAST))
    buf = head + bytes(outer) + last
    result = scan(buf)
    assert scanned(result) == [(len(head) + len(outer), LAST)]
    assert result.corrupt_ranges == [(len(head), len(head) + len(outer))]
    assert result.valid_end == len(buf)


@THOROUGH
@given(record_runs(), record_args(), record_args(), st.binary(max_size=40), st.data())
def test_scan_cuts_a_torn_record_at_its_start_whatever_its_payload_holds(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]],
    outer_args: dict[str, Any],
    inner_args: dict[str, Any],
    pad: bytes,
    data: st.DataObject,
) -> None:
    buf, placed = run
    outer = carrier(outer_args, joined(fmt.encode_record(**inner_args)), pad, pad)
    cut = data.draw(st.integers(1, len(outer) - 1))  # inside its header too
    result = scan(buf + outer[:cut])
    assert scanned(result) == placed
    assert result.corrupt_ranges == []
    assert result.valid_end == len(buf)


@THOROUGH
@given(
    record_runs(), record_args(), record_args(), st.binary(max_size=40), st.booleans(), st.data()
)
def test_scan_skips_a_body_corrupt_record_whatever_its_payload_holds(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]],
    outer_args: dict[str, Any],
    inner_args: dict[str, Any],
    pad: bytes,
    last: bool,
    data: st.DataObject,
) -> None:
    """A record whose header checks out but whose body does not is skipped by its
    length: the record its payload carries stays unread. Last in the segment, it is
    still reported, and `valid_end` stays before it (recovery cuts it off)."""
    buf, placed = run
    inner = joined(fmt.encode_record(**inner_args))
    outer = bytearray(carrier(outer_args, inner, pad, pad))
    inner_at = len(outer) - fmt.RECORD_CHECKSUM_BYTES - len(pad) - len(inner)
    outside_inner = [
        *range(fmt.RECORD_HEADER_BYTES, inner_at),
        *range(inner_at + len(inner), len(outer)),
    ]
    outer[data.draw(st.sampled_from(outside_inner))] ^= data.draw(st.integers(1, 255))
    after = b"" if last else joined(fmt.encode_record(**LAST))
    segment = buf + bytes(outer) + after
    result = scan(segment)
    expected = placed if last else [*placed, (len(buf) + len(outer), LAST)]
    assert scanned(result) == expected
    assert result.corrupt_ranges == [(len(buf), len(buf) + len(outer))]
    assert result.valid_end == (len(buf) if last else len(segment))


@THOROUGH
@given(record_runs(), st.data())
def test_scan_resyncs_after_a_header_that_does_not_check_out(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], data: st.DataObject
) -> None:
    buf, placed = run
    bad_index = data.draw(st.integers(0, len(placed) - 1))
    bad_offset = placed[bad_index][0]
    segment = bytearray(buf + joined(fmt.encode_record(**LAST)))
    next_offset = placed[bad_index + 1][0] if bad_index + 1 < len(placed) else len(buf)
    segment[bad_offset + data.draw(st.integers(0, fmt.RECORD_HEADER_BYTES - 1))] ^= data.draw(
        st.integers(1, 255)
    )
    result = scan(bytes(segment))
    assert scanned(result) == [*placed[:bad_index], *placed[bad_index + 1 :], (len(buf), LAST)]
    assert result.corrupt_ranges == [(bad_offset, next_offset)]
    assert result.valid_end == len(segment)


@FAST
@given(record_runs(), st.binary(min_size=1, max_size=200))
def test_scan_cuts_garbage_after_the_last_record(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], garbage: bytes
) -> None:
    buf, placed = run
    result = scan(buf + SYNC + garbage)
    assert scanned(result) == placed
    assert result.corrupt_ranges == []
    assert result.valid_end == len(buf)


@THOROUGH
@given(record_runs(), st.data())
def test_scan_mutated_yields_only_original_records(
    run: tuple[bytes, list[tuple[int, dict[str, Any]]]], data: st.DataObject
) -> None:
    buf, placed = run
    header, records = buf[: fmt.SEGMENT_HEADER_BYTES], buf[fmt.SEGMENT_HEADER_BYTES :]
    _, mutated_records = data.draw(mutation(records))
    mutated = header + mutated_records
    result = scan(mutated)
    originals = dict(placed)
    for offset, fields in scanned(result):
        assert fields == originals[offset]
    spans = sorted([(o, o + r.length) for o, r in result.records] + result.corrupt_ranges)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start  # records and corrupt ranges never overlap
    assert fmt.SEGMENT_HEADER_BYTES <= result.valid_end <= len(mutated)
    assert all(end <= len(mutated) for _, end in spans)
