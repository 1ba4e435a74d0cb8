"""Hostile input, in process (issue 9, item 4): property-based fuzzing of the HTTP-facing
parsers that tests/format (batch framing) and tests/gateway/test_chunked.py (aws-chunked
body bytes) do not already fuzz. Each parser either parses or raises its module's
defined error (a `PetrelError` subclass; for the request target also UnicodeError, which
the gateway's error middleware answers as InvalidArgument), never anything else: an
unexpected exception is a 500 InternalError and a logged traceback per request. The fast
lane's own request parser is fuzzed against aiohttp's: what the lane takes, aiohttp
must read the same way.

Defects found this way (digits that str.isdigit() accepts and int() refuses) stay
pinned with `@example`, so a regression fails deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import time
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from petrel import sigv4
from petrel.errors import InvalidRange, PetrelError
from petrel_gateway import xml
from petrel_gateway.auth import Credentials, KeyPair, SigV4Verifier
from petrel_gateway.chunked import open_body
from petrel_gateway.fastlane import parse_head
from petrel_gateway.handlers.objects import check_conditions
from petrel_gateway.request import parse_range, resolve_target

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
ACCESS, SECRET = "PKFUZZ00000000000001", "fuzz-secret-0123456789abcdefghijklmnop"

# Text that looks like what arrives in a URL or a header: ASCII, percent escapes
# (valid or not), non-ASCII letters and digits (superscripts, Arabic-Indic), lone
# surrogates as aiohttp's surrogateescape produces them.
_pieces = st.one_of(
    st.text(string.printable, max_size=8),
    st.sampled_from(["%", "%2", "%FF", "%C3%A9", "%00", "%2F", "+", "&", "=", "..", "//",
                     "\udcff", "²", "١٢", "é", " ", "\t", "\r\n", "\x00"]),
    st.text(max_size=4),
)
wire_text = st.lists(_pieces, max_size=8).map("".join)


def _is_defined(exc: BaseException) -> bool:
    return isinstance(exc, PetrelError)


# ----- SigV4 canonicalisation (petrel/sigv4.py) ------------------------------------------
@FUZZ
@given(path=wire_text, query=wire_text)
def test_canonical_uri_and_query(path: str, query: str) -> None:
    for call in (lambda: sigv4.canonical_uri(path), lambda: sigv4.canonical_query(query),
                 lambda: sigv4.parse_query(query)):
        try:
            result = call()
        except PetrelError:
            continue
        assert isinstance(result, (str, list))


@FUZZ
@given(headers=st.lists(st.tuples(wire_text, wire_text), max_size=6),
       signed=st.lists(wire_text, max_size=4), method=wire_text, path=wire_text,
       payload=wire_text)
def test_canonical_request(headers: list[tuple[str, str]], signed: list[str], method: str,
                           path: str, payload: str) -> None:
    collected = sigv4.collect_headers(headers)
    try:
        canonical = sigv4.canonical_request(method, path, "", collected, tuple(signed),
                                            payload)
    except PetrelError:
        return
    assert isinstance(canonical, bytes)


# ----- the verifier (petrel_gateway.auth) --------------------------------------------------
def _verifier() -> SigV4Verifier:
    return SigV4Verifier(Credentials((KeyPair(ACCESS, SECRET),)), region="us-east-1")


_auth_values = st.one_of(
    wire_text,
    st.builds(lambda cred, signed, sig: f"AWS4-HMAC-SHA256 Credential={cred}, "
              f"SignedHeaders={signed}, Signature={sig}", wire_text, wire_text, wire_text),
    st.builds(lambda day, region: f"AWS4-HMAC-SHA256 Credential={ACCESS}/{day}/{region}/s3/"
              f"aws4_request, SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
              wire_text, wire_text),
)


@FUZZ
@given(authorization=_auth_values, amz_date=wire_text, content_sha=wire_text,
       query=wire_text, path=wire_text, extra=st.lists(st.tuples(wire_text, wire_text),
                                                        max_size=3))
def test_verifier_header_auth(authorization: str, amz_date: str, content_sha: str,
                              query: str, path: str, extra: list[tuple[str, str]]) -> None:
    headers = [("Host", "127.0.0.1"), ("Authorization", authorization),
               ("x-amz-date", amz_date), ("x-amz-content-sha256", content_sha), *extra]
    with pytest.raises(PetrelError):
        _verifier().verify("GET", path or "/", query, headers)


_presign_query = st.builds(
    lambda cred, date, expires, signed, sig, rest:
    f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={cred}&X-Amz-Date={date}"
    f"&X-Amz-Expires={expires}&X-Amz-SignedHeaders={signed}&X-Amz-Signature={sig}&{rest}",
    wire_text, wire_text, wire_text, wire_text, wire_text, wire_text)


@FUZZ
@given(query=st.one_of(_presign_query, wire_text), path=wire_text)
def test_verifier_presigned(query: str, path: str) -> None:
    with pytest.raises(PetrelError):
        _verifier().verify("GET", path or "/", query, [("Host", "127.0.0.1")])


def test_verifier_accepts_what_the_signer_signs() -> None:
    """The fuzzing above is not vacuous: a well-formed request does verify."""
    signer = sigv4.Signer(ACCESS, SECRET, clock=time.time)
    headers = signer.sign("GET", "/b/k%20x", "a=1", {"Host": "127.0.0.1"},
                          sigv4.EMPTY_SHA256)
    _verifier().verify("GET", "/b/k%20x", "a=1", headers)


# ----- body decoding headers (petrel_gateway.chunked.open_body) ------------------------------
def _auth_result(payload_hash: str):  # type: ignore[no-untyped-def]
    signer = sigv4.Signer(ACCESS, SECRET, clock=time.time)
    headers = signer.sign("PUT", "/b/k", "", {"Host": "127.0.0.1"}, payload_hash)
    return _verifier().verify("PUT", "/b/k", "", headers)


_MODES = ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", sigv4.EMPTY_SHA256]
_body_header_names = st.sampled_from([
    "x-amz-decoded-content-length", "x-amz-trailer", "content-md5", "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c", "x-amz-checksum-sha256", "x-amz-checksum-algorithm",
    "x-amz-sdk-checksum-algorithm", "content-encoding"])


@FUZZ
@given(mode=st.sampled_from(_MODES),
       headers=st.lists(st.tuples(_body_header_names, wire_text), max_size=5),
       body=st.binary(max_size=64))
@example(mode="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
         headers=[("x-amz-decoded-content-length", "²")], body=b"")
def test_open_body_headers(mode: str, headers: list[tuple[str, str]], body: bytes) -> None:
    try:
        decoder = open_body(_auth_result(mode), headers)
        decoder.feed(body)
        decoder.finish()
    except PetrelError:
        pass


# ----- XML request bodies (petrel_gateway.xml) ---------------------------------------------
def _xml_bodies() -> st.SearchStrategy[bytes]:
    number = st.one_of(st.integers(-5, 10**6).map(str), wire_text)
    part = st.builds(lambda n, e: f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>",
                     number, wire_text)
    complete = st.lists(part, max_size=4).map(
        lambda parts: "<CompleteMultipartUpload>" + "".join(parts) + "</CompleteMultipartUpload>")
    obj = st.builds(lambda k: f"<Object><Key>{k}</Key></Object>", wire_text)
    delete = st.builds(lambda objs, quiet: f"<Delete>{''.join(objs)}<Quiet>{quiet}</Quiet>"
                       "</Delete>", st.lists(obj, max_size=4), wire_text)
    bucket = st.builds(lambda loc: "<CreateBucketConfiguration><LocationConstraint>"
                       f"{loc}</LocationConstraint></CreateBucketConfiguration>", wire_text)
    structured = st.one_of(complete, delete, bucket).map(
        lambda text: text.encode("utf-8", "surrogatepass"))
    return st.one_of(structured, st.binary(max_size=200))


@FUZZ
@given(body=_xml_bodies())
@example(body="<CompleteMultipartUpload><Part><PartNumber>²</PartNumber><ETag>e</ETag>"
         "</Part></CompleteMultipartUpload>".encode())
def test_xml_request_bodies(body: bytes) -> None:
    for parse in (lambda: xml.parse_delete_objects(body, 1000),
                  lambda: xml.parse_complete_multipart(body),
                  lambda: xml.parse_create_bucket(body)):
        with contextlib.suppress(PetrelError):
            parse()


# ----- Range, conditional headers, request targets -----------------------------------------
_range_headers = st.one_of(
    wire_text,
    st.builds(lambda a, b: f"bytes={a}-{b}", st.one_of(st.integers(0, 2**70).map(str), wire_text),
              st.one_of(st.integers(0, 2**70).map(str), wire_text)),
)


@FUZZ
@given(header=st.one_of(st.none(), _range_headers), size=st.integers(0, 2**40))
def test_parse_range(header: str | None, size: int) -> None:
    try:
        parsed = parse_range(header, size)
    except InvalidRange:
        return
    if parsed is not None:  # a satisfiable range lies inside the object
        assert 0 <= parsed.start < size
        length = size - parsed.start if parsed.length is None else parsed.length
        assert 1 <= length <= size - parsed.start


_dates = st.one_of(wire_text, st.sampled_from([
    "Wed, 21 Oct 2015 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Fri, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 +9999"]))


@FUZZ
@given(if_match=st.one_of(st.none(), wire_text), if_none_match=st.one_of(st.none(), wire_text),
       since=st.one_of(st.none(), _dates), unmodified=st.one_of(st.none(), _dates))
def test_conditional_headers(if_match: str | None, if_none_match: str | None,
                             since: str | None, unmodified: str | None) -> None:
    from petrel.model import ObjectInfo

    headers = {name: value for name, value in (
        ("If-Match", if_match), ("If-None-Match", if_none_match),
        ("If-Modified-Since", since), ("If-Unmodified-Since", unmodified)) if value is not None}
    info = ObjectInfo(bucket="b", key="k", size=1, etag="0" * 32,
                      last_modified_ms=1_700_000_000_000)
    assert check_conditions(headers, info) in (None, 304, 412)


@FUZZ
@given(path=wire_text, host=st.one_of(st.just("127.0.0.1:9000"), wire_text))
def test_request_target(path: str, host: str) -> None:
    raw = "/" + path.replace("?", "%3F").replace("#", "%23").replace(" ", "%20")
    try:
        request = make_mocked_request("GET", raw.encode("utf-8", "surrogateescape").decode(
            "latin-1"), headers={"Host": host.encode("utf-8", "surrogateescape").decode(
                "latin-1")})
    except (ValueError, UnicodeError):
        return  # not a request aiohttp's parser would hand over
    try:
        target = resolve_target(request, ("localhost",))
    except (PetrelError, UnicodeError):
        return  # UnicodeError: answered 400 InvalidArgument by gateway/errors.py
    assert target.bucket is None or isinstance(target.bucket, str)


# ----- the fast lane's request parser (gateway/fastlane.py) --------------------------------
# The lane parses request heads itself and hands anything it does not take to aiohttp.
# What it takes, aiohttp (the full stack's parser, the C one where built) must read the
# same way: the same method, target, headers and body length, kept alive. A request the
# two framed differently (where its body ends, whether it is chunked) would desync the
# connection: the next request would start inside this one's body.
_names = st.sampled_from(["Host", "host", "Content-Length", "content-length", "CONTENT-LENGTH",
                          "Transfer-Encoding", "Connection", "Expect", "x-amz-date",
                          "X-Amz-Content-SHA256", "x-amz-meta-a", "Range", "If-Match",
                          "x-amz-copy-source", "Upgrade", "TE", "Content-Type", "A b",
                          "x\x00y", "", "Host ", "é"])
_values = st.one_of(
    st.sampled_from(["127.0.0.1:9000", "5", "0", "05", " 5 ", "5,5", "+5", "-1", "0x5",
                     "\u0661", "²", "5\x00", "\t5\t", "99999999999999999", "keep-alive",
                     "close", "Keep-Alive", "100-continue", "chunked", "gzip, chunked",
                     "UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "bytes=0-1",
                     "a\rb", "a\nb", "", " ", "v\x7f", "é"]),
    st.text(string.printable, max_size=6),
)
# Headers that change how a request is framed or whether its connection stays open.
_framing = st.sampled_from([
    ("Connection", ": ", "close"), ("Connection", ": ", "Upgrade"),
    ("Upgrade", ": ", "websocket"), ("Transfer-Encoding", ": ", "chunked"),
    ("Transfer-Encoding", ": ", "identity"), ("Content-Length", ": ", "0"),
    ("Content-Length", ": ", "3"), ("Host", ": ", "other"), ("TE", ": ", "trailers"),
    ("Expect", ": ", "100-continue"), ("Expect", ": ", "200-ok"),
    ("Connection", ": ", "keep-alive, close"),
    ("x-amz-content-sha256", ": ", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
    ("x-amz-decoded-content-length", ": ", "3")])
_separators = st.sampled_from([": ", ":", ":\t", " : ", ":  "])
_line_ends = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n "])


@st.composite
def _request_bytes(draw: st.DrawFn) -> bytes:
    """A request the lane serves, with up to two hostile twists: an odd method, target,
    version, header, separator, value or line end (one draw in three has none)."""
    twists = set(draw(st.lists(st.sampled_from(
        ["method", "target", "version", "header", "separator", "length", "ends", "body"]),
        max_size=2)))
    method = draw(st.sampled_from(["GET", "HEAD", "PUT", "POST"]))
    target = {"GET": "/b/k?x-id=GetObject", "HEAD": "/b/k", "PUT": "/b/k",
              "POST": "/b?batch-get"}[method]
    body = draw(st.binary(max_size=12)) if method in ("PUT", "POST") else b""
    version, separator = "HTTP/1.1", ": "
    if "method" in twists:
        method = draw(st.sampled_from(["get", "DELETE", "G ET", "OPTIONS", "POST", "GET"]))
    if "target" in twists:
        target = draw(st.one_of(
            st.sampled_from(["/", "b/k", "/b/k k", "/b/%C3%A9", "/b/k?acl", "/b/k#f",
                             "/b/k?X-Amz-Signature=ab&X-Amz-Date=1", "/b?batch-get=",
                             "/b/k?batch-get", "*"]),
            wire_text.map(lambda t: "/" + t)))
    if "version" in twists:
        version = draw(st.sampled_from(["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 ",
                                        "HTTP/1.10", "HTTP/1"]))
    if "separator" in twists:
        separator = draw(st.sampled_from([":", ":\t", " : ", ":  ", "\t:"]))
    fields = [("Host", separator, "127.0.0.1:9000")]
    if body or method in ("PUT", "POST"):
        length = draw(_values) if "length" in twists else str(len(body))
        fields.append(("Content-Length", ": ", length))
    if "header" in twists:
        fields += draw(st.lists(st.one_of(_framing, st.tuples(_names, _separators, _values)),
                                min_size=1, max_size=2))
        fields = draw(st.permutations(fields))
    if "body" in twists:
        body += draw(st.binary(min_size=1, max_size=12))  # more than its length says
    lines = [f"{method} {target} {version}"] + [f"{n}{s}{v}" for n, s, v in fields]
    ends = ["\r\n"] * (len(lines) + 1)
    if "ends" in twists:
        ends = draw(st.lists(_line_ends, min_size=len(lines) + 1, max_size=len(lines) + 1))
    head = "".join(line + end for line, end in zip(lines, ends, strict=False)) + ends[-1]
    return head.encode("utf-8", "surrogateescape") + body


def _aiohttp_reads(data: bytes) -> tuple[Any, bytes] | None:
    """(message, body bytes it framed) of the one request aiohttp reads in `data`;
    None if it refuses it, or reads it otherwise than as one whole or partial request."""
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.http_parser import HttpRequestParser

    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, max_line_size=8190,
                                   max_field_size=8190)
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except HttpProcessingError:
            return None
        if len(messages) != 1 or upgraded or tail:
            return None
        message, payload = messages[0]
        return message, payload.read_nowait()
    finally:
        loop.close()


@FUZZ
@example(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nhello")
@example(b"GET /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
@example(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 3\r\n\r\nabc")
@example(b"GET /b/k HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n")
@example(b"GET /b/k HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
@given(data=_request_bytes())
def test_fast_lane_parses_requests_as_aiohttp_does(data: bytes) -> None:
    request = parse_head(data, 1024, batch_bytes_max=4096)
    if request is None:
        return  # handed to aiohttp, which answers what is malformed
    read = _aiohttp_reads(data)
    assert read is not None, f"the lane took a request aiohttp refuses: {data!r}"
    message, body = read
    path, _, query = message.path.partition("?")
    assert (message.method, path, query) == (request.method, request.path, request.query)
    assert message.version == (1, 1)
    assert not message.should_close and not message.chunked and not message.upgrade
    assert {name.lower(): value for name, value in message.headers.items()} \
        == request.headers
    assert len(message.headers) == len(request.headers)  # no name twice
    assert int(message.headers.get("Content-Length", "0")) == request.body_length
    assert body == request.body  # both framed the same body bytes
