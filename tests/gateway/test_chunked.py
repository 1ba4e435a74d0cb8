"""aws-chunked decoding and body integrity (petrel_gateway.chunked): the AWS documentation's
published streaming examples, bodies encoded by botocore and by boto3 itself, an
independent signed-chunk encoder written here, and property tests that split, mutate and
truncate streams (the decoder must raise a petrel error, never return wrong bytes)."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import io
import zlib
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import boto3
import crc32c
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.httpchecksum import (
    AwsChunkedWrapper,
    Crc32Checksum,
    Sha1Checksum,
    Sha256Checksum,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petrel.errors import (
    BadDigest,
    IncompleteBody,
    InvalidDigest,
    InvalidRequest,
    MalformedTrailerError,
    MissingContentLength,
    PetrelError,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)
from petrel_gateway.auth import (
    EMPTY_SHA256,
    AuthResult,
    ChunkSigning,
    Credentials,
    PayloadMode,
    SigV4Verifier,
)
from petrel_gateway.chunked import (
    BodyDecoder,
    ChunkedLimits,
    open_body,
    stored_content_encoding,
)

KiB = 1024

# ----- the AWS documentation's examples (sigv4-streaming, sigv4-streaming-trailers) -----
DOC_AKID, DOC_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))
DOC_PAYLOAD = b"a" * 66560
DOC_SCOPE = "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
DOC_SIGNED_HEADERS = {
    "Host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "Authorization": (
        f"AWS4-HMAC-SHA256 {DOC_SCOPE},SignedHeaders=content-encoding;content-length;host;"
        "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
        "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    ),
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "Content-Encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "Content-Length": "66824",
}
DOC_SIGNED_CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
DOC_TRAILER_HEADERS = {
    "Host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "Authorization": (
        f"AWS4-HMAC-SHA256 {DOC_SCOPE},SignedHeaders=content-encoding;host;"
        "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;"
        "x-amz-trailer,"
        "Signature=106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
    ),
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "Content-Encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "x-amz-trailer": "x-amz-checksum-crc32c",
    "Content-Length": "66946",
}
DOC_TRAILER_CHUNK_SIGNATURES = (
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
)
DOC_TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def _doc_body(signatures: Sequence[str], trailer: bytes = b"\r\n") -> bytes:
    return (
        f"10000;chunk-signature={signatures[0]}\r\n".encode()
        + DOC_PAYLOAD[:65536]
        + f"\r\n400;chunk-signature={signatures[1]}\r\n".encode()
        + DOC_PAYLOAD[65536:]
        + f"\r\n0;chunk-signature={signatures[2]}\r\n".encode()
        + trailer
    )


DOC_SIGNED_BODY = _doc_body(DOC_SIGNED_CHUNK_SIGNATURES)
DOC_TRAILER_BODY = _doc_body(
    DOC_TRAILER_CHUNK_SIGNATURES,
    b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    + f"x-amz-trailer-signature:{DOC_TRAILER_SIGNATURE}\r\n\r\n".encode(),
)


def _doc_auth(headers: dict[str, str]) -> AuthResult:
    verifier = SigV4Verifier(
        Credentials.of({DOC_AKID: DOC_SECRET}), region="us-east-1", clock=lambda: DOC_NOW
    )
    return verifier.verify("PUT", "/examplebucket/chunkObject.txt", "", headers)


def _decode(decoder: BodyDecoder, body: bytes, splits: Sequence[int] = ()) -> bytes:
    out = bytearray()
    start = 0
    for cut in sorted(splits):
        out += decoder.feed(body[start:cut])
        start = cut
    out += decoder.feed(body[start:])
    decoder.finish()
    return bytes(out)


def test_aws_doc_signed_example() -> None:
    assert len(DOC_SIGNED_BODY) == 66824
    auth = _doc_auth(DOC_SIGNED_HEADERS)
    assert auth.payload_mode is PayloadMode.STREAMING_SIGNED
    decoder = open_body(auth, DOC_SIGNED_HEADERS)
    assert _decode(decoder, DOC_SIGNED_BODY, range(1, len(DOC_SIGNED_BODY), 4093)) == DOC_PAYLOAD


def test_aws_doc_trailer_example() -> None:
    assert len(DOC_TRAILER_BODY) == 66946
    auth = _doc_auth(DOC_TRAILER_HEADERS)
    assert auth.payload_mode is PayloadMode.STREAMING_SIGNED_TRAILER
    decoder = open_body(auth, DOC_TRAILER_HEADERS)
    assert decoder.feed(DOC_TRAILER_BODY) == DOC_PAYLOAD
    summary = decoder.finish()
    assert (summary.checksum_algorithm, summary.checksum_b64) == ("crc32c", "sOO8/Q==")
    assert summary.payload_bytes == len(DOC_PAYLOAD)


def test_aws_doc_examples_byte_at_a_time_around_boundaries() -> None:
    for headers, body in (
        (DOC_SIGNED_HEADERS, DOC_SIGNED_BODY),
        (DOC_TRAILER_HEADERS, DOC_TRAILER_BODY),
    ):
        decoder = open_body(_doc_auth(headers), headers)
        out = bytearray(decoder.feed(body[:65000]))
        for i in range(65000, len(body)):
            out += decoder.feed(body[i : i + 1])
        decoder.finish()
        assert out == DOC_PAYLOAD


def test_aws_doc_tampered_chunk_is_never_released() -> None:
    body = bytearray(DOC_SIGNED_BODY)
    body[66_000] ^= 1  # a byte of the second (1024-byte) chunk: 65712..66736
    decoder = open_body(_doc_auth(DOC_SIGNED_HEADERS), DOC_SIGNED_HEADERS)
    released = decoder.feed(bytes(body[:65800]))
    assert released == DOC_PAYLOAD[:65536]
    with pytest.raises(SignatureDoesNotMatch):
        decoder.feed(bytes(body[65800:]))


def test_aws_doc_trailer_tampered() -> None:
    auth = _doc_auth(DOC_TRAILER_HEADERS)
    for old, new, error in (
        (b"sOO8/Q==", b"sOO8/Q=A", SignatureDoesNotMatch),
        (DOC_TRAILER_SIGNATURE.encode(), b"0" * 64, SignatureDoesNotMatch),
        (b"x-amz-trailer-signature:" + DOC_TRAILER_SIGNATURE.encode() + b"\r\n", b"", None),
    ):
        decoder = open_body(auth, DOC_TRAILER_HEADERS)
        if error is None:
            with pytest.raises(MalformedTrailerError):
                decoder.feed(DOC_TRAILER_BODY.replace(old, new))
        else:
            with pytest.raises(error):
                decoder.feed(DOC_TRAILER_BODY.replace(old, new))


# ----- an independent encoder (for signed chunks, which no botocore client sends) -------
SECRET = "test-secret"
AMZ_DATE, SCOPE = "20240102T030405Z", "20240102/us-east-1/s3/aws4_request"
SEED = "5eed" * 16


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _signing_key() -> bytes:
    key = _hmac(b"AWS4" + SECRET.encode(), "20240102")
    for part in ("us-east-1", "s3", "aws4_request"):
        key = _hmac(key, part)
    return key


def _sign(previous: str, kind: str, payload_hash: str) -> str:
    lines = [f"AWS4-HMAC-SHA256-{kind}", AMZ_DATE, SCOPE, previous]
    lines += [EMPTY_SHA256, payload_hash] if kind == "PAYLOAD" else [payload_hash]
    return hmac.new(_signing_key(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()


def _auth(mode: PayloadMode) -> AuthResult:
    signing = ChunkSigning(SEED, _signing_key(), AMZ_DATE, SCOPE)
    return AuthResult("AKID", "us-east-1", False, mode, None, signing)


def _pieces(payload: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    start = 0
    for size in sizes:
        if start >= len(payload):
            break
        yield payload[start : start + max(size, 1)]
        start += max(size, 1)
    if start < len(payload):
        yield payload[start:]


def encode(
    payload: bytes,
    sizes: Sequence[int],
    *,
    signed: bool,
    trailers: Sequence[tuple[str, str]] = (),
    trailer_section: bool = False,
) -> bytes:
    """aws-chunked as the AWS documentation describes it."""
    out = bytearray()
    previous = SEED
    for piece in [*_pieces(payload, sizes), b""]:
        header = f"{len(piece):x}"
        if signed:
            previous = _sign(previous, "PAYLOAD", hashlib.sha256(piece).hexdigest())
            header += f";chunk-signature={previous}"
        out += header.encode() + b"\r\n" + piece + (b"\r\n" if piece else b"")
    if not trailer_section:
        return bytes(out + b"\r\n")
    canonical = "".join(f"{name}:{value}\n" for name, value in trailers)
    for name, value in trailers:
        out += f"{name}:{value}\r\n".encode()
    if signed:
        signature = _sign(previous, "TRAILER", hashlib.sha256(canonical.encode()).hexdigest())
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return bytes(out + b"\r\n")


def _crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


CASES = {
    # mode -> (signed chunks, trailer section)
    PayloadMode.STREAMING_SIGNED: (True, False),
    PayloadMode.STREAMING_SIGNED_TRAILER: (True, True),
    PayloadMode.STREAMING_UNSIGNED_TRAILER: (False, True),
}


def _case(mode: PayloadMode, payload: bytes, sizes: Sequence[int]) -> tuple[dict[str, str], bytes]:
    signed, trailer_section = CASES[mode]
    headers = {"x-amz-decoded-content-length": str(len(payload))}
    trailers: list[tuple[str, str]] = []
    if trailer_section:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
        trailers = [("x-amz-checksum-crc32", _crc32_b64(payload))]
    body = encode(payload, sizes, signed=signed, trailers=trailers, trailer_section=trailer_section)
    return headers, body


@pytest.mark.parametrize("mode", list(CASES))
def test_own_encoder_round_trip(mode: PayloadMode) -> None:
    payload = bytes(range(256)) * 80
    headers, body = _case(mode, payload, [8 * KiB, 8 * KiB, 100])
    assert _decode(open_body(_auth(mode), headers), body) == payload
    headers, body = _case(mode, b"", [])
    assert _decode(open_body(_auth(mode), headers), body) == b""


def test_signed_seed_from_a_botocore_signed_request() -> None:
    """A real seed: botocore signs the headers, chunks chain from its signature."""

    class StreamingSigner(S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return PayloadMode.STREAMING_SIGNED.value

    payload = b"z" * (20 * KiB)
    request = AWSRequest(
        "PUT",
        "http://127.0.0.1:9/bkt/key",
        headers={
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload)),
        },
    )
    StreamingSigner(BotoCredentials("AKID", SECRET), "s3", "us-east-1").add_auth(request)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    headers["Host"] = "127.0.0.1:9"
    verifier = SigV4Verifier(Credentials.of({"AKID": SECRET}))
    auth = verifier.verify("PUT", "/bkt/key", "", headers)
    signing = auth.chunk_signing
    assert auth.payload_mode is PayloadMode.STREAMING_SIGNED
    out, previous = bytearray(), signing.seed_signature
    for piece in (payload[: 16 * KiB], payload[16 * KiB :], b""):
        previous = hmac.new(
            signing.signing_key,
            "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    signing.amz_date,
                    signing.scope,
                    previous,
                    EMPTY_SHA256,
                    hashlib.sha256(piece).hexdigest(),
                ]
            ).encode(),
            hashlib.sha256,
        ).hexdigest()
        out += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece + b"\r\n"
    assert _decode(open_body(auth, headers), bytes(out)) == payload


# ----- botocore's own encoder and boto3's own requests ------------------------------------
@pytest.mark.parametrize(
    ("checksum_cls", "name"),
    [
        (Crc32Checksum, "x-amz-checksum-crc32"),
        (Sha256Checksum, "x-amz-checksum-sha256"),
        (Sha1Checksum, "x-amz-checksum-sha1"),
        (None, None),
    ],
)
@pytest.mark.parametrize("size", [0, 1, 1000, 5000])
def test_botocore_aws_chunked_wrapper_decodes(
    checksum_cls: type | None, name: str | None, size: int
) -> None:
    payload = bytes(i * 7 % 251 for i in range(size))
    kwargs: dict[str, Any] = {"chunk_size": 1000}
    if checksum_cls is not None:
        kwargs |= {"checksum_cls": checksum_cls, "checksum_name": name}
    body = AwsChunkedWrapper(io.BytesIO(payload), **kwargs).read()
    headers = {"x-amz-decoded-content-length": str(size)}
    if name is not None:
        headers["x-amz-trailer"] = name
    decoder = open_body(_auth(PayloadMode.STREAMING_UNSIGNED_TRAILER), headers)
    assert _decode(decoder, body, range(3, len(body), 7)) == payload


class _EmptyRaw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def _boto3_put(endpoint: str, payload: bytes, **extra: Any) -> tuple[dict[str, str], bytes, Any]:
    sent: list[Any] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _EmptyRaw())

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="AKID",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    client.meta.events.register("before-send.s3.*", before_send)
    client.put_object(Bucket="bkt", Key="dir/ключ x", Body=io.BytesIO(payload), **extra)
    request = sent[0]
    url = urlsplit(request.url)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    headers["Host"] = url.netloc
    body = request.body.read() if hasattr(request.body, "read") else request.body
    auth = SigV4Verifier(Credentials.of({"AKID": SECRET})).verify(
        request.method, url.path, url.query, headers
    )
    return headers, body, auth


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256", "SHA1"])
def test_boto3_streaming_unsigned_trailer_request_decodes(algorithm: str) -> None:
    payload = b"boto3 payload " * 1000
    # Over https boto3 sends STREAMING-UNSIGNED-PAYLOAD-TRAILER with a checksum trailer.
    headers, body, auth = _boto3_put("https://127.0.0.1:9", payload, ChecksumAlgorithm=algorithm)
    assert auth.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
    decoder = open_body(auth, headers)
    assert _decode(decoder, body, range(5, len(body), 999)) == payload
    decoder = open_body(auth, headers)
    decoder.feed(body)
    assert decoder.finish().checksum_algorithm == algorithm.lower()


def test_boto3_plain_request_with_checksum_header() -> None:
    payload = b"plain body" * 100
    headers, body, auth = _boto3_put("http://127.0.0.1:9", payload, ContentMD5=_md5(payload))
    assert auth.payload_mode is PayloadMode.SHA256 and "x-amz-checksum-crc32" in headers
    assert _decode(open_body(auth, headers), body) == payload
    with pytest.raises(XAmzContentSHA256Mismatch):
        _decode(open_body(auth, headers), body[:-1] + b"!")


# ----- property tests: splits, mutations, truncations, garbage ---------------------------
payloads = st.binary(max_size=3000)
chunk_sizes = st.lists(st.integers(1, 1200), max_size=8)
modes = st.sampled_from(list(CASES))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _splits(body: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(body)), max_size=12)


@PROPERTY
@given(mode=modes, payload=payloads, sizes=chunk_sizes, data=st.data())
def test_any_split_decodes(
    mode: PayloadMode, payload: bytes, sizes: list[int], data: st.DataObject
) -> None:
    headers, body = _case(mode, payload, sizes)
    splits = data.draw(_splits(body))
    assert _decode(open_body(_auth(mode), headers), body, splits) == payload


def _outcome(
    mode: PayloadMode, headers: dict[str, str], body: bytes, splits: list[int]
) -> tuple[bytes, PetrelError | None]:
    """(bytes released, the error that stopped decoding or None)."""
    decoder = open_body(_auth(mode), headers)
    out = bytearray()
    start = 0
    try:
        for cut in [*sorted(splits), len(body)]:
            out += decoder.feed(body[start:cut])
            start = max(start, cut)
        decoder.finish()
    except PetrelError as error:
        return bytes(out), error
    return bytes(out), None


@PROPERTY
@given(mode=modes, payload=payloads, sizes=chunk_sizes, data=st.data())
def test_mutated_stream_never_yields_wrong_bytes(
    mode: PayloadMode, payload: bytes, sizes: list[int], data: st.DataObject
) -> None:
    headers, body = _case(mode, payload, sizes)
    position = data.draw(st.integers(0, len(body) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != body[position]))
    mutated = body[:position] + bytes([value]) + body[position + 1 :]
    released, error = _outcome(mode, headers, mutated, data.draw(_splits(mutated)))
    if error is None:
        # Only harmless mutations get through (e.g. hex digits or trailer name case).
        assert released == payload
    elif mode.signed_chunks:
        assert payload.startswith(released)  # nothing unverified was released


@PROPERTY
@given(mode=modes, payload=payloads, sizes=chunk_sizes, data=st.data())
def test_truncated_stream_raises(
    mode: PayloadMode, payload: bytes, sizes: list[int], data: st.DataObject
) -> None:
    headers, body = _case(mode, payload, sizes)
    cut = data.draw(st.integers(0, len(body) - 1))
    released, error = _outcome(mode, headers, body[:cut], data.draw(_splits(body[:cut])))
    assert isinstance(error, PetrelError)
    assert payload.startswith(released)


@PROPERTY
@given(mode=modes, garbage=st.binary(max_size=600), length=st.integers(0, 10**6))
def test_garbage_raises_petrel_errors_only(mode: PayloadMode, garbage: bytes, length: int) -> None:
    headers = {"x-amz-decoded-content-length": str(length)}
    if mode.trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    _, error = _outcome(mode, headers, garbage, [len(garbage) // 2])
    assert error is not None


@PROPERTY
@given(payload=payloads, sizes=chunk_sizes, delta=st.integers(-5, 5).filter(bool))
def test_decoded_length_must_match(payload: bytes, sizes: list[int], delta: int) -> None:
    mode = PayloadMode.STREAMING_SIGNED
    headers, body = _case(mode, payload, sizes)
    claimed = len(payload) + delta
    if claimed < 0:
        return
    headers["x-amz-decoded-content-length"] = str(claimed)
    released, error = _outcome(mode, headers, body, [])
    expected = IncompleteBody if delta > 0 else InvalidRequest
    assert isinstance(error, expected), error
    assert payload.startswith(released)


# ----- specific refusals ----------------------------------------------------------------
def _refused(mode: PayloadMode, headers: dict[str, str], body: bytes) -> PetrelError:
    _, error = _outcome(mode, headers, body, [])
    assert error is not None
    return error


def test_framing_refusals() -> None:
    signed = PayloadMode.STREAMING_SIGNED
    unsigned = PayloadMode.STREAMING_UNSIGNED_TRAILER
    headers, body = _case(signed, b"x" * 100, [])
    assert isinstance(_refused(signed, headers, body + b"extra"), InvalidRequest)
    assert isinstance(_refused(signed, headers, body[:-2]), IncompleteBody)
    line = b"0" * 300 + b"1;chunk-signature=" + b"0" * 64 + b"\r\n"
    assert "longer than" in str(_refused(signed, headers, line))
    assert "bare LF" in str(_refused(unsigned, {"x-amz-decoded-content-length": "1"}, b"1\n"))
    for bad in (b"+1\r\nx\r\n0\r\n\r\n", b"0x1\r\nx\r\n0\r\n\r\n", b" 1\r\nx\r\n0\r\n\r\n"):
        error = _refused(unsigned, {"x-amz-decoded-content-length": "1"}, bad)
        assert isinstance(error, InvalidRequest)
    one = {"x-amz-decoded-content-length": "1"}
    assert isinstance(_refused(unsigned, one, b"1\r\nxY0\r\n\r\n"), InvalidRequest)
    # A signature on an unsigned chunk, or none on a signed one, is garbage.
    assert isinstance(_refused(unsigned, one, _case(signed, b"x", [])[1]), InvalidRequest)
    assert isinstance(_refused(signed, one, b"1\r\nx\r\n0\r\n\r\n"), InvalidRequest)


def test_signed_chunk_size_is_bounded() -> None:
    mode = PayloadMode.STREAMING_SIGNED
    headers, body = _case(mode, b"y" * (9 * KiB), [9 * KiB])
    decoder = open_body(_auth(mode), headers, ChunkedLimits(signed_chunk_bytes_max=8 * KiB))
    with pytest.raises(InvalidRequest, match="larger than"):
        decoder.feed(body)
    with pytest.raises(ValueError):
        ChunkedLimits(signed_chunk_bytes_max=10)


def test_trailer_refusals() -> None:
    mode = PayloadMode.STREAMING_UNSIGNED_TRAILER
    payload = b"trailer test"
    headers, body = _case(mode, payload, [])
    good = _crc32_b64(payload)
    cases = [
        (body.replace(good.encode(), _crc32_b64(b"other").encode()), BadDigest),
        (body.replace(good.encode(), b"!!!!"), InvalidRequest),
        (body.replace(b"x-amz-checksum-crc32", b"x-amz-checksum-sha256"), MalformedTrailerError),
        (body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32 "), MalformedTrailerError),
        (
            body.replace(b"\r\n\r\n", b"\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n"),
            MalformedTrailerError,
        ),
        (encode(payload, [], signed=False, trailer_section=True), MalformedTrailerError),
    ]
    for mutated, error in cases:
        assert isinstance(_refused(mode, headers, mutated), error), mutated
    signed_mode = PayloadMode.STREAMING_SIGNED_TRAILER
    headers, body = _case(signed_mode, payload, [])
    trailer_line = f"x-amz-checksum-crc32:{good}\r\n".encode()
    after_signature = body[:-2] + trailer_line + b"\r\n"
    assert isinstance(_refused(signed_mode, headers, after_signature), MalformedTrailerError)


def test_header_refusals_before_any_byte() -> None:
    mode = PayloadMode.STREAMING_UNSIGNED_TRAILER
    with pytest.raises(MissingContentLength) as info:
        open_body(_auth(mode), {})
    assert info.value.status == 411
    for headers in (
        {"x-amz-decoded-content-length": "12a"},
        {"x-amz-decoded-content-length": "1", "x-amz-trailer": "x-amz-meta-x"},
        {"x-amz-decoded-content-length": "1", "x-amz-trailer": "x-amz-checksum-crc64nvme"},
        {"x-amz-decoded-content-length": "1", "x-amz-checksum-crc32": "AAAA"},
        {
            "x-amz-decoded-content-length": "1",
            "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-checksum-sha256": base64.b64encode(bytes(32)).decode(),
        },
    ):
        with pytest.raises(PetrelError) as refused:
            open_body(_auth(mode), headers)
        assert refused.value.status == 400
    with pytest.raises(InvalidRequest, match="x-amz-trailer"):
        open_body(_auth(PayloadMode.UNSIGNED), {"x-amz-trailer": "x-amz-checksum-crc32"})


# ----- checksum headers over plain bodies ----------------------------------------------------
def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _plain(headers: dict[str, str], sha256: str | None = None) -> BodyDecoder:
    mode = PayloadMode.SHA256 if sha256 else PayloadMode.UNSIGNED
    signing = ChunkSigning(SEED, b"k", AMZ_DATE, SCOPE)
    return open_body(AuthResult("AKID", "us-east-1", False, mode, sha256, signing), headers)


def test_content_md5() -> None:
    body = b"content md5 body"
    assert _decode(_plain({"Content-MD5": _md5(body)}), body, [3, 9]) == body
    with pytest.raises(BadDigest):
        _decode(_plain({"Content-MD5": _md5(body + b"x")}), body)
    for malformed in ("not base64!", base64.b64encode(b"short").decode(), "", "AAAA==="):
        with pytest.raises(InvalidDigest) as info:
            _plain({"Content-MD5": malformed})
        assert (info.value.code, info.value.status) == ("InvalidDigest", 400)


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("crc32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
        ("crc32c", lambda d: crc32c.crc32c(d).to_bytes(4, "big")),
        ("sha1", lambda d: hashlib.sha1(d).digest()),
        ("sha256", lambda d: hashlib.sha256(d).digest()),
    ],
)
def test_checksum_headers(name: str, digest: Any) -> None:
    body = b"123456789" * 50
    header = f"x-amz-checksum-{name}"
    value = base64.b64encode(digest(body)).decode()
    decoder = _plain({header: value, "x-amz-sdk-checksum-algorithm": name.upper()})
    out = b"".join(decoder.feed(body[i : i + 37]) for i in range(0, len(body), 37))
    summary = decoder.finish()
    assert out == body and (summary.checksum_algorithm, summary.checksum_b64) == (name, value)
    with pytest.raises(BadDigest, match=name.upper()):
        _decode(_plain({header: value}), body + b"!")


def test_crc32c_known_vector() -> None:
    decoder = _plain(
        {"x-amz-checksum-crc32c": base64.b64encode(bytes.fromhex("e3069283")).decode()}
    )
    _decode(decoder, b"123456789")


def test_payload_sha256_mismatch() -> None:
    body = b"signed body"
    assert _decode(_plain({}, hashlib.sha256(body).hexdigest()), body) == body
    with pytest.raises(XAmzContentSHA256Mismatch) as info:
        _decode(_plain({}, hashlib.sha256(body).hexdigest()), body + b"x")
    assert (info.value.code, info.value.status) == ("XAmzContentSHA256Mismatch", 400)


def test_stored_content_encoding() -> None:
    assert stored_content_encoding(None) is None
    assert stored_content_encoding("aws-chunked") is None
    assert stored_content_encoding("gzip,aws-chunked") == "gzip"
    assert stored_content_encoding("aws-chunked, gzip, br") == "gzip, br"
