"""Request bodies as S3 receives them: aws-chunked decoding and integrity checks, with no
HTTP framework in it.

`open_body(auth, headers)` picks the decoder for the payload mode that SigV4 verification
(`gateway/auth.py`) returned; the handler then calls `feed(data)` with each piece read
from the socket (split anywhere) and `finish()` at end of stream:

    body = open_body(auth, request.headers)
    async for piece in request.content.iter_any():
        sink(body.feed(piece))
    summary = body.finish()   # only now is the object complete and verified

Contract: `feed` returns payload bytes and raises a `PetrelError` on the first bad byte;
`finish` raises if the stream ended early or a digest differs. In signed-chunk modes each
chunk's bytes are released only after its signature checks out; whole-body digests
(x-amz-content-sha256, Content-MD5, x-amz-checksum-*, trailer checksums) can only be
checked at the end, so a caller must not commit anything before `finish()` returns.

aws-chunked wire format (x-amz-content-sha256 = STREAMING-*):

| part        | bytes                                                                      |
| ----------- | -------------------------------------------------------------------------- |
| data chunk  | hex(size) [";chunk-signature=" sig64] CRLF, size bytes, CRLF               |
| final chunk | "0" [";chunk-signature=" sig64] CRLF                                       |
| trailers    | ("name:value" CRLF)* ["x-amz-trailer-signature:" sig64 CRLF]  (-TRAILER)   |
| end         | CRLF                                                                       |

Chunk signatures are present exactly in the STREAMING-AWS4-HMAC-SHA256-* modes; each one
chains from the previous (the seed is the request signature), and the trailer signature
chains from the final chunk's. The payload sizes must add up to
x-amz-decoded-content-length.

| condition                                           | error                          |
| --------------------------------------------------- | ------------------------------ |
| garbage framing, over-long chunk header or trailer  | InvalidRequest / MalformedTrailerError |
| chunks announce more than decoded-content-length    | InvalidRequest                 |
| final chunk before decoded-content-length / EOF     | IncompleteBody                 |
| a chunk or trailer signature differs                | SignatureDoesNotMatch          |
| no x-amz-decoded-content-length on aws-chunked      | MissingContentLength           |
| body sha256 differs from x-amz-content-sha256       | XAmzContentSHA256Mismatch      |
| Content-MD5 not base64 of 16 bytes                  | InvalidDigest                  |
| Content-MD5 or x-amz-checksum-* differs             | BadDigest                      |
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import crc32c

from petrel.errors import (
    BadDigest,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    MalformedTrailerError,
    MissingContentLength,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)
from petrel_gateway.request import is_decimal

from .auth import (
    EMPTY_SHA256,
    AuthResult,
    ChunkSigning,
    PayloadMode,
    chunk_signature,
    collect_headers,
    signatures_equal,
    single_header,
    trailer_signature,
)

KiB = 1024
MiB = 1024 * KiB

_SIGNED_SIZE_LINE = re.compile(
    rb"(?P<size>[0-9a-fA-F]{1,16});chunk-signature=(?P<sig>[0-9a-f]{64})"
)
_UNSIGNED_SIZE_LINE = re.compile(rb"(?P<size>[0-9a-fA-F]{1,16})")
_TRAILER_NAME = re.compile(rb"[A-Za-z0-9-]{1,64}")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
_CHECKSUM_PREFIX = "x-amz-checksum-"
# x-amz-checksum-* headers that are not checksum values.
_CHECKSUM_NON_VALUES = frozenset({"algorithm", "type", "mode"})


@dataclass(frozen=True, slots=True)
class ChunkedLimits:
    """Bounds on what an aws-chunked body may make the gateway hold."""

    # "hex-size;chunk-signature=<64 hex>" is at most 16 + 17 + 64 bytes.
    chunk_header_bytes_max: int = 256
    # "x-amz-checksum-sha256:<44 base64>", "x-amz-trailer-signature:<64 hex>".
    trailer_line_bytes_max: int = 256
    trailers_max: int = 4
    # A signed chunk is held whole until its signature checks out; SDKs send 8 KiB-1 MiB.
    signed_chunk_bytes_max: int = 16 * MiB

    def __post_init__(self) -> None:
        if self.chunk_header_bytes_max < 100 or self.trailer_line_bytes_max < 100:
            raise ValueError("chunk header and trailer lines need at least 100 bytes")
        if self.trailers_max < 1 or self.signed_chunk_bytes_max < 8 * KiB:
            raise ValueError("trailers_max must be >= 1 and signed_chunk_bytes_max >= 8 KiB")


@dataclass(frozen=True, slots=True)
class BodySummary:
    """A body that passed every check it was sent with."""

    payload_bytes: int
    # The flexible checksum the client sent (header or trailer), verified, as S3 echoes it:
    # algorithm ("crc32", "crc32c", "sha1", "sha256") and its base64 value.
    checksum_algorithm: str | None
    checksum_b64: str | None


class BodyDecoder(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Payload bytes released by this piece (possibly b"")."""
        ...

    def finish(self) -> BodySummary:
        """End of stream: raises unless the body is complete and every digest matches."""
        ...


# ----- checksums -----------------------------------------------------------------------
class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


class _Crc32c(_Crc32):
    def update(self, data: bytes, /) -> None:
        self._value = crc32c.crc32c(data, self._value)


# algorithm -> (digest size in bytes, hasher factory)
CHECKSUM_ALGORITHMS: Mapping[str, tuple[int, Callable[[], _Hasher]]] = {
    "crc32": (4, _Crc32),
    "crc32c": (4, _Crc32c),
    "sha1": (20, hashlib.sha1),
    "sha256": (32, hashlib.sha256),
}


@dataclass(frozen=True, slots=True)
class ExpectedChecksums:
    """What the request headers promise about the body."""

    content_md5: bytes | None
    algorithm: str | None  # a CHECKSUM_ALGORITHMS key
    # From the x-amz-checksum-<algorithm> header; None when it arrives as a trailer.
    value: bytes | None


def _b64_digest(text: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _checksum_algorithm(name: str) -> str | None:
    """ "crc32" for "x-amz-checksum-crc32"; None for names that carry no checksum value."""
    algorithm = name.removeprefix(_CHECKSUM_PREFIX)
    if algorithm in _CHECKSUM_NON_VALUES:
        return None
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidRequest(f"The checksum algorithm in {name} is not supported.")
    return algorithm


def parse_checksum_headers(
    headers: dict[str, list[str]], trailer_names: tuple[str, ...] = ()
) -> ExpectedChecksums:
    """Content-MD5 and at most one x-amz-checksum-* (as a header or a declared trailer).

    Raises InvalidDigest (malformed Content-MD5) or InvalidRequest (malformed or several
    x-amz-checksum-* values, an unsupported algorithm).
    """
    md5_text = single_header(headers, "content-md5")
    content_md5 = None if md5_text is None else _b64_digest(md5_text, 16)
    if md5_text is not None and content_md5 is None:
        raise InvalidDigest()
    found: list[tuple[str, bytes | None]] = []
    for name in headers:
        if name.startswith(_CHECKSUM_PREFIX) and (algorithm := _checksum_algorithm(name)):
            text = single_header(headers, name) or ""
            value = _b64_digest(text, CHECKSUM_ALGORITHMS[algorithm][0])
            if value is None:
                raise InvalidRequest(f"Value for {name} header is invalid.")
            found.append((algorithm, value))
    found += [
        (algorithm, None) for name in trailer_names if (algorithm := _checksum_algorithm(name))
    ]
    if len(found) > 1:
        raise InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    algorithm, value = found[0] if found else (None, None)
    return ExpectedChecksums(content_md5=content_md5, algorithm=algorithm, value=value)


class BodyChecksums:
    """Computes, incrementally, the digests `expected` asks for and checks them at the end."""

    def __init__(self, expected: ExpectedChecksums) -> None:
        self._expected = expected
        self._md5 = hashlib.md5(usedforsecurity=False) if expected.content_md5 else None
        self._checksum = (
            CHECKSUM_ALGORITHMS[expected.algorithm][1]() if expected.algorithm else None
        )
        self._bytes = 0

    def update(self, data: bytes) -> None:
        self._bytes += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        if self._checksum is not None:
            self._checksum.update(data)

    def verify(self, trailer_value: str | None = None) -> BodySummary:
        """Raises BadDigest on a mismatch; `trailer_value` is the base64 trailer checksum,
        required when the checksum was declared as a trailer."""
        expected = self._expected
        if self._md5 is not None and self._md5.digest() != expected.content_md5:
            raise BadDigest()
        if self._checksum is None or expected.algorithm is None:
            return BodySummary(self._bytes, None, None)
        claimed = expected.value
        if claimed is None:
            size = CHECKSUM_ALGORITHMS[expected.algorithm][0]
            claimed = None if trailer_value is None else _b64_digest(trailer_value, size)
            if claimed is None:
                raise InvalidRequest(
                    f"Value for x-amz-checksum-{expected.algorithm} trailing header is invalid."
                )
        actual = self._checksum.digest()
        if actual != claimed:
            name = expected.algorithm.upper()
            raise BadDigest(f"The {name} you specified did not match the calculated checksum.")
        return BodySummary(self._bytes, expected.algorithm, base64.b64encode(actual).decode())


# ----- whole bodies --------------------------------------------------------------------
class PlainBody:
    """A body sent as is: released as it arrives, its sha256 (when signed) and checksums
    checked in `finish`."""

    def __init__(self, payload_sha256: str | None, checksums: BodyChecksums) -> None:
        self._expected_sha256 = payload_sha256
        self._sha256 = hashlib.sha256() if payload_sha256 is not None else None
        self._checksums = checksums

    def feed(self, data: bytes) -> bytes:
        if self._sha256 is not None:
            self._sha256.update(data)
        self._checksums.update(data)
        return data

    def finish(self) -> BodySummary:
        if self._sha256 is not None and self._sha256.hexdigest() != self._expected_sha256:
            raise XAmzContentSHA256Mismatch()
        return self._checksums.verify()


# ----- aws-chunked ---------------------------------------------------------------------
class _State(enum.Enum):
    SIZE_LINE = enum.auto()
    DATA = enum.auto()
    DATA_END = enum.auto()
    FINAL_END = enum.auto()
    TRAILER = enum.auto()
    DONE = enum.auto()


class AwsChunkedBody:
    """Incremental aws-chunked decoder (see the module docstring for the wire format).

    Holds at most one chunk header or trailer line, plus, in signed modes, one chunk
    (`ChunkedLimits.signed_chunk_bytes_max`).
    """

    def __init__(
        self,
        *,
        mode: PayloadMode,
        signing: ChunkSigning,
        decoded_bytes: int,
        trailer_names: tuple[str, ...],
        checksums: BodyChecksums,
        limits: ChunkedLimits,
    ) -> None:
        assert mode.chunked
        self._mode = mode
        self._signing = signing
        self._decoded_bytes = decoded_bytes
        self._trailer_names = trailer_names
        self._checksums = checksums
        self._limits = limits
        self._state = _State.SIZE_LINE
        self._buffer = bytearray()
        self._announced_bytes = 0  # payload bytes that chunk headers have announced
        self._chunk_left = 0
        self._chunk = bytearray()  # signed modes: the current chunk, until verified
        self._claimed_signature = ""
        self._previous_signature = signing.seed_signature
        self._trailers: dict[str, str] = {}
        self._trailer_signed = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def finish(self) -> BodySummary:
        if self._state is not _State.DONE:
            raise IncompleteBody("The aws-chunked body ended before its final chunk.")
        trailer = next(
            (v for k, v in self._trailers.items() if k.startswith(_CHECKSUM_PREFIX)), None
        )
        return self._checksums.verify(trailer)

    # -- state machine: each step consumes what it can and says whether it progressed --
    def _step(self, out: bytearray) -> bool:
        state = self._state
        if state is _State.SIZE_LINE:
            return self._read_size_line()
        if state is _State.DATA:
            return self._read_data(out)
        if state is _State.DATA_END or state is _State.FINAL_END:
            return self._read_crlf()
        if state is _State.TRAILER:
            return self._read_trailer_line()
        if self._buffer:
            raise InvalidRequest("The aws-chunked body continues after its final chunk.")
        return False

    def _take_line(self, bytes_max: int, what: str) -> bytes | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", 0, bytes_max + 2)
        if end < 0:
            if buffer.find(b"\n", 0, bytes_max + 2) >= 0:
                raise InvalidRequest(f"Malformed aws-chunked {what}: bare LF.")
            if len(buffer) >= bytes_max + 2:
                raise InvalidRequest(f"The aws-chunked {what} is longer than {bytes_max} bytes.")
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        return line

    def _read_size_line(self) -> bool:
        line = self._take_line(self._limits.chunk_header_bytes_max, "chunk header")
        if line is None:
            return False
        signed = self._mode.signed_chunks
        match = (_SIGNED_SIZE_LINE if signed else _UNSIGNED_SIZE_LINE).fullmatch(line)
        if match is None:
            raise InvalidRequest(f"Malformed aws-chunked chunk header {line[:80]!r}.")
        size = int(match["size"], 16)
        self._claimed_signature = match["sig"].decode() if signed else ""
        if size > self._decoded_bytes - self._announced_bytes:
            raise InvalidRequest(
                "The aws-chunked body carries more bytes than x-amz-decoded-content-length "
                f"({self._decoded_bytes})."
            )
        if signed and size > self._limits.signed_chunk_bytes_max:
            raise InvalidRequest(
                f"A signed chunk is larger than {self._limits.signed_chunk_bytes_max} bytes."
            )
        self._announced_bytes += size
        if size == 0:
            self._end_of_chunks()
        else:
            self._chunk_left, self._state = size, _State.DATA
        return True

    def _read_data(self, out: bytearray) -> bool:
        if not self._buffer:
            return False
        take = min(len(self._buffer), self._chunk_left)
        piece = bytes(self._buffer[:take])
        del self._buffer[:take]
        self._chunk_left -= take
        if not self._mode.signed_chunks:
            self._checksums.update(piece)
            out += piece
        else:
            self._chunk += piece
            if self._chunk_left == 0:
                chunk = bytes(self._chunk)
                self._chunk.clear()
                self._verify_chunk(hashlib.sha256(chunk).hexdigest())
                self._checksums.update(chunk)
                out += chunk
        if self._chunk_left == 0:
            self._state = _State.DATA_END
        return True

    def _read_crlf(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise InvalidRequest("Malformed aws-chunked body: expected CRLF.")
        del self._buffer[:2]
        self._state = _State.SIZE_LINE if self._state is _State.DATA_END else _State.DONE
        return True

    def _verify_chunk(self, chunk_sha256_hex: str) -> None:
        expected = chunk_signature(self._signing, self._previous_signature, chunk_sha256_hex)
        if not signatures_equal(expected, self._claimed_signature):
            raise SignatureDoesNotMatch("A chunk signature does not match.")
        self._previous_signature = self._claimed_signature

    def _end_of_chunks(self) -> None:
        if self._mode.signed_chunks:
            self._verify_chunk(EMPTY_SHA256)
        if self._announced_bytes != self._decoded_bytes:
            raise IncompleteBody(
                f"The aws-chunked body carries {self._announced_bytes} bytes; "
                f"x-amz-decoded-content-length is {self._decoded_bytes}."
            )
        self._state = _State.TRAILER if self._mode.trailer else _State.FINAL_END

    def _read_trailer_line(self) -> bool:
        line = self._take_line(self._limits.trailer_line_bytes_max, "trailer")
        if line is None:
            return False
        if not line:
            self._end_of_trailers()
            return True
        raw_name, sep, raw_value = line.partition(b":")
        if not sep or not _TRAILER_NAME.fullmatch(raw_name) or not raw_value.strip().isascii():
            raise MalformedTrailerError(f"Malformed trailer line {line[:80]!r}.")
        name, value = raw_name.decode().lower(), raw_value.strip().decode()
        if self._trailer_signed:
            raise MalformedTrailerError("A trailer follows x-amz-trailer-signature.")
        if name == _TRAILER_SIGNATURE:
            self._verify_trailer_signature(value)
            return True
        if name not in self._trailer_names or name in self._trailers:
            raise MalformedTrailerError(f"Trailer {name!r} was not declared in x-amz-trailer.")
        if len(self._trailers) >= self._limits.trailers_max:
            raise MalformedTrailerError(f"More than {self._limits.trailers_max} trailers.")
        self._trailers[name] = value
        return True

    def _verify_trailer_signature(self, claimed: str) -> None:
        if not self._mode.signed_chunks:
            raise MalformedTrailerError("x-amz-trailer-signature in an unsigned body.")
        canonical = "".join(f"{name}:{value}\n" for name, value in self._trailers.items())
        expected = trailer_signature(self._signing, self._previous_signature, canonical.encode())
        if not signatures_equal(expected, claimed):
            raise SignatureDoesNotMatch("The trailer signature does not match.")
        self._trailer_signed = True

    def _end_of_trailers(self) -> None:
        if self._mode.signed_chunks and not self._trailer_signed:
            raise MalformedTrailerError("The trailers lack x-amz-trailer-signature.")
        missing = [name for name in self._trailer_names if name not in self._trailers]
        if missing:
            raise MalformedTrailerError(f"Declared trailer {missing[0]!r} was not sent.")
        self._state = _State.DONE


# ----- choosing a decoder ------------------------------------------------------------------
def _declared_trailers(headers: dict[str, list[str]], mode: PayloadMode) -> tuple[str, ...]:
    value = single_header(headers, "x-amz-trailer")
    if value is None:
        return ()
    if not mode.trailer:
        raise InvalidRequest(
            f"x-amz-trailer is not allowed with x-amz-content-sha256 {mode.value}."
        )
    names = tuple(name.strip().lower() for name in value.split(","))
    for name in names:
        if not name.startswith(_CHECKSUM_PREFIX) or _checksum_algorithm(name) is None:
            raise InvalidRequest(
                f"The value specified in the x-amz-trailer header ({name!r}) is not supported."
            )
    if len(set(names)) != len(names):
        raise InvalidRequest("x-amz-trailer names a trailer twice.")
    return names


def _decoded_length(headers: dict[str, list[str]]) -> int:
    value = single_header(headers, "x-amz-decoded-content-length")
    if value is None:
        raise MissingContentLength(
            "You must provide x-amz-decoded-content-length with an aws-chunked body."
        )
    if not is_decimal(value) or len(value) > 18:
        raise InvalidArgument(f"Invalid x-amz-decoded-content-length {value[:40]!r}.")
    return int(value)


def open_body(
    auth: AuthResult,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    limits: ChunkedLimits | None = None,
) -> BodyDecoder:
    """The decoder for this request's body, per `auth.payload_mode` and the checksum
    headers (Content-MD5, x-amz-checksum-*, x-amz-trailer, x-amz-decoded-content-length).

    Raises, before any byte is read: InvalidDigest, InvalidRequest, InvalidArgument,
    MissingContentLength.
    """
    header_map = collect_headers(headers)
    mode = auth.payload_mode
    trailer_names = _declared_trailers(header_map, mode)
    checksums = BodyChecksums(parse_checksum_headers(header_map, trailer_names))
    if not mode.chunked:
        return PlainBody(auth.payload_sha256, checksums)
    return AwsChunkedBody(
        mode=mode,
        signing=auth.chunk_signing,
        decoded_bytes=_decoded_length(header_map),
        trailer_names=trailer_names,
        checksums=checksums,
        limits=limits or ChunkedLimits(),
    )


def stored_content_encoding(value: str | None) -> str | None:
    """Content-Encoding to store with the object: S3 drops the aws-chunked token."""
    if value is None:
        return None
    kept = [token.strip() for token in value.split(",") if token.strip().lower() != "aws-chunked"]
    return ", ".join(kept) or None
