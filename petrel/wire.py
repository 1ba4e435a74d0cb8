"""The batch wire format, version 1: framing of batch get and batch put bodies.

One module encodes and decodes it for both sides (the gateway and `petrel.Client`), so
the two cannot drift. The layout is specified in docs/wire.md; in short, a body is an
8-byte stream header followed by frames, the last of which is an END frame:

    stream header   magic b"PBAT" | version u8 | kind u8 | 2 zero bytes
    frame header    checksum u64 | status u8 | flags u8 | key_len u16 | aux_len u32
                    | data_len u64                     (24 bytes, little-endian)
    frame body      key (UTF-8) | aux | data

`checksum` is the xxh3-64 of everything after it in the frame (the other header fields,
key, aux and data, contiguous), so a flipped bit anywhere in a frame is caught, status
and lengths included, not only in its payload. The END frame carries the
number of item frames before it: a stream cut short (a gateway killed mid-response) has
no END frame and fails to decode; it is never passed off as a shorter batch.

Decoding works on `memoryview` slices: a payload is copied once, out of the received
buffer, when the caller asks for it as bytes; `decode_get_response`, the client's, hands
each payload out as bytes copied straight from the pieces the answer arrived in.
Encoding appends a frame as its header (one pack, key and aux joined to it) and its
payload uncopied, hashed without joining the two: a stream is joined once, whole.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import NamedTuple

import xxhash

from petrel.errors import MalformedBatch

MAGIC = b"PBAT"
VERSION = 1
CONTENT_TYPE = "application/x-petrel-batch"

_STREAM = struct.Struct("<4sBBH")
_CHECKSUM = struct.Struct("<Q")
_FIELDS = struct.Struct("<BBHIQ")
_HEADER = struct.Struct("<QBBHIQ")  # checksum, then _FIELDS: one unpack per decoded frame
_RANGE = struct.Struct("<QQ")
_COUNT = struct.Struct("<Q")
_INFO = struct.Struct("<QQ")
# LOCATE_RESPONSE: a FILE frame's aux (segment id, device, inode), and a LOCATIONS
# table entry: segment id, record offset, record length, record checksum, start and
# length of the bytes asked for (in the payload), status (a Where).
_FILE = struct.Struct("<QQQ")
_LOCATION = struct.Struct("<QQQQQQB7x")
STREAM_HEADER_BYTES = _STREAM.size
FRAME_HEADER_BYTES = _CHECKSUM.size + _FIELDS.size

TO_END = (1 << 64) - 1  # a range length meaning "to the end of the object"
KEY_BYTES_MAX = 0xFFFF

_xxh3 = xxhash.xxh3_64_intdigest
_Hasher = xxhash.xxh3_64


class Kind(IntEnum):
    """What a stream carries; a decoder refuses a stream of another kind."""

    GET_REQUEST = 1
    GET_RESPONSE = 2
    PUT_REQUEST = 3
    PUT_RESPONSE = 4
    LOCATE_RESPONSE = 5  # the answer to a batch locate (short-circuit reads)


class Status(IntEnum):
    OK = 0  # request items, found objects, stored objects
    NOT_FOUND = 1
    ERROR = 2
    FILE = 3  # LOCATE_RESPONSE: a segment's local file
    LOCATIONS = 4  # LOCATE_RESPONSE: the table of where each key's record is
    END = 255


_STATUS_OF = {int(s): s for s in Status}  # a dict lookup: cheaper than Status(n)

FLAG_RANGE = 0x01  # GET_REQUEST: aux is a byte range (start u64, length u64)


class Frame(NamedTuple):
    """One decoded frame; `aux` and `data` are views into the decoded buffer."""

    status: Status
    flags: int
    key: str
    aux: memoryview
    data: memoryview


class ItemInfo(NamedTuple):
    """What a found object's GET_RESPONSE frame says about it (in `aux`)."""

    size: int  # the whole object's size, whatever range was served
    last_modified_ms: int
    etag: str


class Where(IntEnum):
    """The status of a key in a batch locate's LOCATIONS table."""

    LOCATED = 0  # its record is in a FILE the answer names, where the entry says
    NOT_FOUND = 1  # no such key
    FETCH = 2  # read it with a batch get: a remote segment, a large object, an error


class SegmentFile(NamedTuple):
    """A FILE frame: segment `segment_id` is the file at `path` (device and inode as
    the gateway's stat saw them)."""

    segment_id: int
    path: str
    device: int
    inode: int


# A LOCATIONS entry as decoded: (segment id, offset, length, checksum, start, count,
# status); as built for encoding: the same.
LocateEntry = tuple[int, int, int, int, int, int, int]


# ----- encoding --------------------------------------------------------------------
def stream_header(kind: Kind) -> bytes:
    return _STREAM.pack(MAGIC, VERSION, kind, 0)


def _checksum(head: bytes, data: bytes | bytearray | memoryview) -> int:
    """xxh3-64 of `head` (fields, key, aux) followed by `data`, without joining them."""
    if not len(data):
        return _xxh3(head)
    hasher = _Hasher(head)
    hasher.update(data)
    return hasher.intdigest()


def _head(status: int, key: str, aux: bytes, data_len: int, flags: int) -> tuple[bytes, bytes]:
    """(raw key, the bytes a frame's checksum covers before its data)."""
    raw_key = key.encode("utf-8", "surrogatepass")
    if len(raw_key) > KEY_BYTES_MAX:
        raise MalformedBatch(f"key of {len(raw_key)} bytes is over {KEY_BYTES_MAX}")
    return raw_key, _FIELDS.pack(status, flags, len(raw_key), len(aux), data_len) + raw_key + aux


def frame(status: Status, key: str, aux: bytes = b"", data: bytes | memoryview = b"",
          flags: int = 0) -> list[bytes | memoryview]:
    """The pieces of one frame (header with key and aux, then data), for a writev-style
    join: the payload is not copied here."""
    pieces: list[bytes | memoryview] = []
    add_frame(pieces, status, key, aux, data, flags)
    return pieces


def add_frame(pieces: list[bytes | memoryview], status: Status, key: str, aux: bytes = b"",
              data: bytes | memoryview = b"", flags: int = 0) -> None:
    """Append one frame's pieces to `pieces`, a stream being built for one join (each
    payload is then copied once, into the joined body)."""
    _, head = _head(status, key, aux, len(data), flags)
    pieces.append(_CHECKSUM.pack(_checksum(head, data)) + head)
    if len(data):
        pieces.append(data)


def add_found(pieces: list[bytes | memoryview], key: str, size: int, last_modified_ms: int,
              etag: str, data: bytes | memoryview) -> None:
    """`add_frame` of the OK frame of a found object (its info as `info_aux` encodes
    it): the batch get answer's hot path, one call per object, so add_frame's steps
    are inlined here (tests check both encode the same bytes)."""
    raw_key = key.encode("utf-8", "surrogatepass")
    if len(raw_key) > KEY_BYTES_MAX:
        raise MalformedBatch(f"key of {len(raw_key)} bytes is over {KEY_BYTES_MAX}")
    aux = _INFO.pack(size, last_modified_ms) + etag.encode("ascii")
    head = _FIELDS.pack(Status.OK, 0, len(raw_key), len(aux), len(data)) + raw_key + aux
    if len(data):
        hasher = _Hasher(head)
        hasher.update(data)
        pieces.append(_CHECKSUM.pack(hasher.intdigest()) + head)
        pieces.append(data)
    else:
        pieces.append(_CHECKSUM.pack(_xxh3(head)) + head)


def encode_locate_response(files: Iterable[SegmentFile],
                           locations: Sequence[LocateEntry]) -> bytes:
    """A whole LOCATE_RESPONSE: a FILE frame per segment file, the LOCATIONS table
    (one entry per key asked, in request order), END counting the entries."""
    pieces: list[bytes | memoryview] = [stream_header(Kind.LOCATE_RESPONSE)]
    for file in files:
        add_frame(pieces, Status.FILE, "", _FILE.pack(file.segment_id, file.device, file.inode),
                  os.fsencode(file.path))
    pack = _LOCATION.pack
    add_frame(pieces, Status.LOCATIONS, "", b"", b"".join([pack(*entry) for entry in locations]))
    pieces.append(end_frame(len(locations)))
    return b"".join(pieces)


def end_frame(count: int) -> bytes:
    rest = _FIELDS.pack(Status.END, 0, 0, _COUNT.size, 0) + _COUNT.pack(count)
    return _CHECKSUM.pack(_xxh3(rest)) + rest


def error_aux(code: str, message: str) -> bytes:
    """The aux of a NOT_FOUND or ERROR frame: the S3 error code, a newline, a message."""
    return f"{code}\n{message}".encode()


def parse_error_aux(aux: memoryview | bytes) -> tuple[str, str]:
    code, _, message = bytes(aux).decode("utf-8", "replace").partition("\n")
    return code, message


def info_aux(info: ItemInfo) -> bytes:
    return _INFO.pack(info.size, info.last_modified_ms) + info.etag.encode("ascii")


def parse_info_aux(aux: memoryview | bytes) -> ItemInfo:
    if len(aux) < _INFO.size:
        raise MalformedBatch("item info shorter than 16 bytes")
    size, mtime = _INFO.unpack_from(aux)
    return ItemInfo(size, mtime, bytes(aux[_INFO.size:]).decode("ascii", "replace"))


def encode_get_request(items: Iterable[tuple[str, tuple[int, int | None] | None]]) -> bytes:
    """A GET_REQUEST body: keys, each with an optional (start, length) byte range;
    length None reads to the end of the object."""
    pieces: list[bytes | memoryview] = [stream_header(Kind.GET_REQUEST)]
    append, fields, pack_checksum = pieces.append, _FIELDS.pack, _CHECKSUM.pack
    count = 0
    for key, byte_range in items:
        if byte_range is None:
            # add_frame(pieces, Status.OK, key), inlined: one frame per key asked.
            raw_key = key.encode("utf-8", "surrogatepass")
            if len(raw_key) > KEY_BYTES_MAX:
                raise MalformedBatch(f"key of {len(raw_key)} bytes is over {KEY_BYTES_MAX}")
            head = fields(Status.OK, 0, len(raw_key), 0, 0) + raw_key
            append(pack_checksum(_xxh3(head)) + head)
        else:
            start, length = byte_range
            if start < 0 or (length is not None and length < 0):
                raise MalformedBatch(f"negative byte range for {key!r}")
            aux = _RANGE.pack(start, TO_END if length is None else length)
            add_frame(pieces, Status.OK, key, aux, flags=FLAG_RANGE)
        count += 1
    pieces.append(end_frame(count))
    return b"".join(pieces)


def encode_put_request(items: Iterable[tuple[str, bytes | memoryview, str]]) -> bytes:
    """A PUT_REQUEST body: (key, data, content type) items; "" for the default type."""
    pieces: list[bytes | memoryview] = [stream_header(Kind.PUT_REQUEST)]
    count = 0
    for key, data, content_type in items:
        add_frame(pieces, Status.OK, key, content_type.encode(), data)
        count += 1
    pieces.append(end_frame(count))
    return b"".join(pieces)


# ----- decoding --------------------------------------------------------------------
def decode(buffer: bytes | bytearray | memoryview, kind: Kind,
           items_max: int | None = None) -> list[Frame]:
    """Every item frame of a whole stream of `kind`, checked: header, each frame's
    checksum, the END frame's count, nothing after END. Raises MalformedBatch."""
    view = memoryview(buffer)
    check_stream_header(view, kind)
    frames: list[Frame] = []
    position = STREAM_HEADER_BYTES
    while True:
        parsed = _frame_at(view, position)
        if parsed is None:
            raise MalformedBatch(f"batch stream truncated after {len(frames)} items")
        item, position = parsed
        if item.status is Status.END:
            _check_end(item, len(frames))
            if position != len(view):
                raise MalformedBatch(f"{len(view) - position} bytes after the END frame")
            return frames
        if items_max is not None and len(frames) >= items_max:
            raise MalformedBatch(f"more than {items_max} items in one batch")
        frames.append(item)


def decode_get_request(buffer: bytes, items_max: int | None = None
                       ) -> list[tuple[str, tuple[int, int | None] | None]]:
    """A whole GET_REQUEST stream as (key, byte range or None) items: what `decode`
    followed by `frame_range` gives, checked the same way (header, every frame's
    checksum, known statuses, ranges, the END frame's count, nothing after END), in one
    pass that builds no Frame: the gateway's side of every batch get, once per key.
    Raises MalformedBatch."""
    view = memoryview(buffer)
    check_stream_header(view, Kind.GET_REQUEST)
    size = len(buffer)
    items: list[tuple[str, tuple[int, int | None] | None]] = []
    append = items.append
    position = STREAM_HEADER_BYTES
    while True:
        bounds = _checked_frame(buffer, view, position)
        if bounds is None:
            raise MalformedBatch(f"batch stream truncated after {len(items)} items")
        status, flags, key_at, aux_at, data_at, end = bounds
        if status not in _STATUS_OF:
            raise MalformedBatch(f"unknown frame status {status}")
        try:
            key = buffer[key_at:aux_at].decode()
        except UnicodeDecodeError:
            raise MalformedBatch("batch item key is not valid UTF-8") from None
        if status == Status.END:
            _check_end(Frame(Status.END, flags, key, view[aux_at:data_at], view[data_at:end]),
                       len(items))
            if end != size:
                raise MalformedBatch(f"{size - end} bytes after the END frame")
            return items
        if items_max is not None and len(items) >= items_max:
            raise MalformedBatch(f"more than {items_max} items in one batch")
        if not flags & FLAG_RANGE:
            if data_at != aux_at:
                raise MalformedBatch(f"unexpected aux bytes on {key!r}")
            append((key, None))
        else:
            if data_at - aux_at != _RANGE.size:
                raise MalformedBatch(f"byte range of {key!r} is not 16 bytes")
            start, length = _RANGE.unpack_from(buffer, aux_at)
            append((key, (start, None if length == TO_END else length)))
        position = end


def decode_get_response(pieces: Iterable[bytes | bytearray | memoryview],
                        keys: Sequence[str]) -> list[bytes | Frame]:
    """The answer to a batch get of `keys`, as it arrived in `pieces` (a whole
    GET_RESPONSE stream cut anywhere, e.g. its HTTP chunks): per key, in order, the
    payload of its OK frame as bytes, or the Frame of its NOT_FOUND or ERROR frame.

    The client's hot path: checked as `decode` checks a stream (header, every frame's
    checksum, the END frame's count, nothing after END), and every frame must answer
    the key asked in its place. A payload is copied once, out of its piece. A frame cut
    across pieces is joined once it is whole, so a large object in small pieces costs
    no more than one copy. Raises MalformedBatch."""
    answers: list[bytes | Frame] = []
    held: list[bytes] = []  # the pieces of a stream header or frame not whole yet
    held_bytes = 0
    needed = STREAM_HEADER_BYTES  # what `held` must reach before it is decoded
    started = done = False
    for piece in pieces:
        if done:
            if len(piece):
                raise MalformedBatch("bytes after the END frame")
            continue
        held.append(bytes(piece))
        held_bytes += len(piece)
        if held_bytes < needed:
            continue
        buffer = held[0] if len(held) == 1 else b"".join(held)
        position = 0
        if not started:
            check_stream_header(memoryview(buffer), Kind.GET_RESPONSE)
            position, started = STREAM_HEADER_BYTES, True
        position, done = _get_answers(buffer, position, keys, answers)
        if done and position != len(buffer):
            raise MalformedBatch("bytes after the END frame")
        rest = buffer[position:] if position else buffer
        held, held_bytes = ([rest], len(rest)) if rest else ([], 0)
        needed = _frame_bytes(rest)
    if not done:
        raise MalformedBatch(f"batch stream truncated after {len(answers)} items")
    return answers


def _frame_bytes(start: bytes) -> int:
    """The length of the frame that `start` begins, or of its header while that is cut."""
    if len(start) < FRAME_HEADER_BYTES:
        return FRAME_HEADER_BYTES
    _, _, _, key_len, aux_len, data_len = _HEADER.unpack_from(start)
    return int(FRAME_HEADER_BYTES + key_len + aux_len + data_len)


def _get_answers(buffer: bytes, position: int, keys: Sequence[str],
                 answers: list[bytes | Frame]) -> tuple[int, bool]:
    """Decode the whole frames of `buffer` from `position` into `answers`: (where the
    first incomplete frame starts, whether the END frame was read)."""
    view = memoryview(buffer)
    append = answers.append
    while True:
        bounds = _checked_frame(buffer, view, position)
        if bounds is None:
            break
        status, flags, key_at, aux_at, data_at, end = bounds
        if status == Status.END:
            _check_end(Frame(Status.END, flags, "", view[aux_at:data_at], view[data_at:end]),
                       len(answers))
            if aux_at != key_at:
                raise MalformedBatch("malformed END frame")
            if len(answers) != len(keys):
                raise MalformedBatch(f"batch get answered {len(answers)} items for "
                                     f"{len(keys)}")
            return end, True
        index = len(answers)
        try:
            key = buffer[key_at:aux_at].decode()
        except UnicodeDecodeError:
            raise MalformedBatch("batch item key is not valid UTF-8") from None
        if index >= len(keys) or key != keys[index]:
            asked = repr(keys[index]) if index < len(keys) else "nothing"
            raise MalformedBatch(f"batch get answered {key!r} in the place of {asked}")
        if status == Status.OK:
            append(buffer[data_at:end])
        else:
            known = _STATUS_OF.get(status)
            if known is not Status.NOT_FOUND and known is not Status.ERROR:
                raise MalformedBatch(f"frame status {status} in a batch get answer")
            append(Frame(known, flags, key, view[aux_at:data_at], view[data_at:end]))
        position = end
    return position, False


def decode_locate_response(buffer: bytes, count: int
                           ) -> tuple[dict[int, SegmentFile], list[LocateEntry]]:
    """The whole answer to a batch locate of `count` keys: (its segment files by id,
    its LOCATIONS entries in request order). Checked as `decode` checks a stream;
    every LOCATED entry must name a segment with a FILE frame. Raises MalformedBatch."""
    view = memoryview(buffer)
    check_stream_header(view, Kind.LOCATE_RESPONSE)
    files: dict[int, SegmentFile] = {}
    table: memoryview | None = None
    position = STREAM_HEADER_BYTES
    while True:
        parsed = _frame_at(view, position)
        if parsed is None:
            raise MalformedBatch("batch locate answer truncated")
        item, position = parsed
        if item.status is Status.FILE and table is None and len(item.aux) == _FILE.size:
            segment_id, device, inode = _FILE.unpack(item.aux)
            files[segment_id] = SegmentFile(segment_id, os.fsdecode(bytes(item.data)),
                                            device, inode)
        elif item.status is Status.LOCATIONS and table is None:
            table = item.data
        elif item.status is Status.END and table is not None:
            _check_end(item, count)
            break
        else:
            raise MalformedBatch(f"unexpected frame (status {int(item.status)}) in a batch "
                                 "locate answer")
    if position != len(view):
        raise MalformedBatch("bytes after the END frame")
    if len(table) != count * _LOCATION.size:
        raise MalformedBatch(f"batch locate answered {len(table) // _LOCATION.size} items "
                             f"for {count}")
    locations = list(_LOCATION.iter_unpack(table))
    for entry in locations:
        if entry[6] == Where.LOCATED:
            if entry[0] not in files:
                raise MalformedBatch(f"location in segment {entry[0]:x}, which has no FILE")
        elif entry[6] > Where.FETCH:
            raise MalformedBatch(f"unknown location status {entry[6]}")
    return files, locations


class StreamDecoder:
    """Incremental decoding of a stream that arrives in chunks: `feed` returns the
    frames completed so far, `finish` raises unless the END frame arrived."""

    def __init__(self, kind: Kind) -> None:
        self._kind = kind
        self._pending = b""  # the start of a frame not yet complete
        self._started = False
        self._count = 0
        self.done = False

    def feed(self, chunk: bytes | memoryview) -> list[Frame]:
        if self.done:
            if len(chunk):
                raise MalformedBatch("bytes after the END frame")
            return []
        # Frames handed out are views into immutable bytes: later chunks never move them.
        view = memoryview(self._pending + bytes(chunk) if self._pending else bytes(chunk))
        position = 0
        if not self._started:
            if len(view) < STREAM_HEADER_BYTES:
                self._pending = bytes(view)
                return []
            check_stream_header(view, self._kind)
            position = STREAM_HEADER_BYTES
            self._started = True
        frames: list[Frame] = []
        while not self.done:
            parsed = _frame_at(view, position)
            if parsed is None:
                break
            item, position = parsed
            if item.status is Status.END:
                _check_end(item, self._count)
                if position != len(view):
                    raise MalformedBatch("bytes after the END frame")
                self.done = True
                break
            self._count += 1
            frames.append(item)
        self._pending = bytes(view[position:])
        return frames

    def finish(self) -> None:
        if not self.done:
            raise MalformedBatch(f"batch stream truncated after {self._count} items")


def check_stream_header(view: memoryview, kind: Kind) -> None:
    if len(view) < STREAM_HEADER_BYTES:
        raise MalformedBatch("batch stream shorter than its 8-byte header")
    magic, version, got_kind, reserved = _STREAM.unpack_from(view)
    if magic != MAGIC:
        raise MalformedBatch("not a petrel batch stream (bad magic)")
    if version != VERSION:
        raise MalformedBatch(f"batch wire version {version} not supported (this is {VERSION})")
    if got_kind != kind:
        raise MalformedBatch(f"batch stream of kind {got_kind}, expected {int(kind)}")
    if reserved:
        raise MalformedBatch("reserved stream header bytes are not zero")


def _checked_frame(buffer: bytes | memoryview, view: memoryview, position: int
                   ) -> tuple[int, int, int, int, int, int] | None:
    """(status, flags, key_at, aux_at, data_at, end) of the frame at `position` of
    `buffer` (`view` is a memoryview of it), its checksum checked; None when the buffer
    ends first. Every decoder reads a frame's header through this."""
    if len(buffer) - position < FRAME_HEADER_BYTES:
        return None
    checksum, status, flags, key_len, aux_len, data_len = _HEADER.unpack_from(buffer, position)
    key_at = position + FRAME_HEADER_BYTES
    aux_at = key_at + key_len
    data_at = aux_at + aux_len
    end = data_at + data_len
    if end > len(buffer):
        return None
    if _xxh3(view[position + 8 : end]) != checksum:
        raise MalformedBatch("batch frame checksum mismatch (corrupted in transit)")
    return status, flags, key_at, aux_at, data_at, end


def _frame_at(view: memoryview, position: int) -> tuple[Frame, int] | None:
    """The frame at `position` and the position after it, or None when the buffer
    ends first. Raises MalformedBatch for a frame that is complete but wrong."""
    bounds = _checked_frame(view, view, position)
    if bounds is None:
        return None
    status, flags, body, aux_at, data_at, end = bounds
    known = _STATUS_OF.get(status)
    if known is None:
        raise MalformedBatch(f"unknown frame status {status}")
    try:
        key = str(view[body:aux_at], "utf-8")
    except UnicodeDecodeError:
        raise MalformedBatch("batch item key is not valid UTF-8") from None
    return Frame(known, flags, key, view[aux_at:data_at], view[data_at:end]), end


def _check_end(item: Frame, count: int) -> None:
    if item.key or len(item.data) or len(item.aux) != _COUNT.size:
        raise MalformedBatch("malformed END frame")
    (declared,) = _COUNT.unpack(item.aux)
    if declared != count:
        raise MalformedBatch(f"END frame counts {declared} items, stream has {count}")


def frame_range(item: Frame) -> tuple[int, int | None] | None:
    """A GET_REQUEST frame's byte range as (start, length or None), or None."""
    if not item.flags & FLAG_RANGE:
        if len(item.aux):
            raise MalformedBatch(f"unexpected aux bytes on {item.key!r}")
        return None
    if len(item.aux) != _RANGE.size:
        raise MalformedBatch(f"byte range of {item.key!r} is not 16 bytes")
    start, length = _RANGE.unpack(item.aux)
    return start, None if length == TO_END else length
