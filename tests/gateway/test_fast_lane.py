"""The fast lane (gateway/fastlane.py) answers exactly what the full aiohttp stack
answers, and hands every other request over intact.

Each case is sent twice to the same gateway: once whole in one write (the lane serves
it) and once split across two writes (the lane hands the connection to aiohttp, which
serves it). The two answers must be the same but for Date and the request id; the
lane's counters in /metrics show which path served each."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import pytest
from botocore.exceptions import ClientError
from rawhttp import (
    ACCESS_KEY,
    SECRET_KEY,
    RawResponse,
    _read_response,
    delete_bucket_fully,
    make_client,
    object_path,
    sign,
)

from petrel import wire
from petrel.sigv4 import Signer
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway
from petrel_gateway.fastlane import parse_head

# Answers differ in these only.
_PER_REQUEST = {"date", "x-amz-request-id", "x-amz-id-2"}
PACK_THRESHOLD = 65536


@pytest.fixture(scope="module")
def lane_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own, so the lane's counters move only with this module."""
    data_dir = str(tmp_path_factory.mktemp("lane") / "data")
    config = os.path.join(os.path.dirname(data_dir), "petrel.toml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"[store]\npack_threshold_bytes = {PACK_THRESHOLD}\n"
                     "[auth]\npublic_read_buckets = [\"lane-public\"]\n")
    running = start_gateway(data_dir, "--config", config, "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


@pytest.fixture(scope="module")
def s3(lane_gateway: Gateway):  # type: ignore[no-untyped-def]
    return make_client(lane_gateway.endpoint)


@pytest.fixture
def bucket(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = "lane-" + uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=name)
    yield name
    delete_bucket_fully(s3, name)


_scrapes = [0]  # /metrics requests sent so far


def _metrics(gateway: Gateway) -> str:
    """/metrics; the lane hands each scrape's connection over (a probe is not an object
    GET), which `_counts` takes back out."""
    _scrapes[0] += 1
    response = _exchange(gateway.port, [b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"])[0]
    return response.body.decode()


def _counts(gateway: Gateway) -> tuple[int, int]:
    """(requests the lane answered, connections it handed over for other reasons)."""
    text = _metrics(gateway)
    served = re.search(r"^petrel_fast_lane_requests_total (\S+)$", text, re.M)
    handed = re.search(r"^petrel_fast_lane_handovers_total (\S+)$", text, re.M)
    assert served and handed, text
    return int(float(served[1])), int(float(handed[1])) - _scrapes[0]


def _exchange(port: int, pieces: list[bytes], *, responses: int = 1,
              method: str = "GET") -> list[RawResponse]:
    """Send `pieces` as separate writes (a pause between them so they arrive apart)
    on one connection, then read `responses` answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for number, piece in enumerate(pieces):
            if number:
                time.sleep(0.05)
            sock.sendall(piece)
        with sock.makefile("rb") as stream:
            return [_read_one(stream, method) for _ in range(responses)]


def _read_one(stream: BinaryIO, method: str) -> RawResponse:
    """One response from a buffered stream (answers may arrive in one segment)."""
    status_line = stream.readline().decode("latin-1")
    assert status_line, "connection closed before a response"
    headers = {}
    while (line := stream.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    return RawResponse(int(status_line.split()[1]), headers, stream.read(length))


def _head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _signed(method: str, path: str, port: int, extra: dict[str, str] | None = None,
            secret: str = SECRET_KEY, body: bytes = b"",
            payload_hash: str = "UNSIGNED-PAYLOAD") -> bytes:
    if method == "PUT":
        extra = {"Content-Length": str(len(body)), **(extra or {})}
    headers = sign(method, f"http://127.0.0.1:{port}{path}", ACCESS_KEY, secret,
                   headers=extra, payload_hash=payload_hash, body=body)
    return _head(method, path, port, headers) + body


def _presigned(method: str, path: str, port: int, expires_s: int = 600,
               clock: float | None = None) -> bytes:
    signer = Signer(ACCESS_KEY, SECRET_KEY, clock=(lambda: clock) if clock else time.time)
    query = signer.presign(method, f"127.0.0.1:{port}", path, expires_s=expires_s)
    return _head(method, f"{path}?{query}", port, {})


def _same_answer(gateway: Gateway, request: bytes, method: str = "GET") -> RawResponse:
    # The full stack closes a connection whose request it refused with the body unread;
    # the lane has read every body it answers, so it keeps the connection.
    """Send `request` whole (the lane) and split (the full stack); assert the answers
    match and each went the way intended. Returns the lane's answer."""
    served, handed = _counts(gateway)
    lane = _exchange(gateway.port, [request], method=method)[0]
    after_lane = _counts(gateway)
    assert after_lane == (served + 1, handed), "the lane did not answer"
    cut = request.index(b"\r\n") + 5  # inside the head: the lane hands it over
    full = _exchange(gateway.port, [request[:cut], request[cut:]], method=method)[0]
    assert _counts(gateway) == (served + 1, handed + 1), "not handed to the full stack"
    assert lane.status == full.status
    assert {k: v for k, v in lane.headers.items() if k not in _PER_REQUEST} == \
        {k: v for k, v in full.headers.items() if k not in _PER_REQUEST | {"connection"}}
    request_id = re.compile(rb"<RequestId>[^<]*</RequestId>")
    assert request_id.sub(b"", lane.body) == request_id.sub(b"", full.body)
    assert lane.headers["x-amz-request-id"] and lane.headers["server"] == "petrel"
    return lane


def test_get_and_head_match_the_full_stack(lane_gateway: Gateway, s3, bucket: str) -> None:
    body = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="dir/a b+é", Body=body, ContentType="image/jpeg",
                  Metadata={"label": "cat", "fold": "3"})
    path = object_path(bucket, "dir/a b+é")
    port = lane_gateway.port
    got = _same_answer(lane_gateway, _signed("GET", path, port))
    assert got.status == 200 and got.body == body
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["x-amz-meta-label"] == "cat"
    head = _same_answer(lane_gateway, _signed("HEAD", path, port), method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(len(body))
    presigned = _same_answer(lane_gateway, _presigned("GET", path, port))
    assert presigned.body == body


@pytest.mark.parametrize("header, status, part", [
    ("bytes=10-19", 206, slice(10, 20)),
    ("bytes=-5", 206, slice(-5, None)),
    ("bytes=9990-", 206, slice(9990, None)),
    ("bytes=20000-", 416, None),
    ("items=1-2", 200, slice(None)),
])
def test_ranges_match_the_full_stack(lane_gateway: Gateway, s3, bucket: str, header: str,
                                     status: int, part: slice | None) -> None:
    body = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    path = object_path(bucket, "r")
    got = _same_answer(lane_gateway, _signed("GET", path, lane_gateway.port,
                                             {"Range": header}))
    assert got.status == status
    if part is not None:
        assert got.body == body[part]
    _same_answer(lane_gateway, _signed("HEAD", path, lane_gateway.port, {"Range": header}),
                 method="HEAD")


def test_errors_match_the_full_stack(lane_gateway: Gateway, s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    port = lane_gateway.port
    cases = [
        (_signed("GET", object_path(bucket, "missing"), port), 404, "NoSuchKey"),
        (_signed("GET", "/no-such-bucket-lane/k", port), 404, "NoSuchBucket"),
        (_signed("GET", object_path(bucket, "k"), port, secret="wrong"), 403,
         "SignatureDoesNotMatch"),
        (_head("GET", object_path(bucket, "k"), port, {}), 403, "AccessDenied"),
        (_presigned("GET", object_path(bucket, "k"), port, expires_s=60,
                    clock=time.time() - 3600), 403, "AccessDenied"),
    ]
    for request, status, code in cases:
        got = _same_answer(lane_gateway, request)
        assert (got.status, got.code) == (status, code), got
    missing_head = _same_answer(lane_gateway, _signed("HEAD", object_path(bucket, "nope"),
                                                      port), method="HEAD")
    assert missing_head.status == 404 and missing_head.body == b""


def test_public_read_bucket_served_anonymously(lane_gateway: Gateway, s3) -> None:
    s3.create_bucket(Bucket="lane-public")
    try:
        s3.put_object(Bucket="lane-public", Key="open", Body=b"for all")
        got = _same_answer(lane_gateway, _head("GET", "/lane-public/open",
                                               lane_gateway.port, {}))
        assert got.status == 200 and got.body == b"for all"
    finally:
        delete_bucket_fully(s3, "lane-public")


@pytest.mark.parametrize("request_bytes", [
    b"PUT /{b}/k?partNumber=1&uploadId=x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"PUT /{b}/k HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nx-amz-copy-source: /{b}/j\r\n\r\n",
    b"PUT /{b}/k HTTP/1.1\r\nHost: h\r\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    b"\r\nContent-Length: 5\r\nx-amz-decoded-content-length: 0\r\n\r\n0\r\n\r\n",
    b"PUT /{b}/k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PUT /{b}/k HTTP/1.1\r\nHost: h\r\n\r\n",  # no Content-Length
    b"GET /{b} HTTP/1.1\r\nHost: h\r\n\r\n",  # a listing
    b"GET /{b}/k?acl HTTP/1.1\r\nHost: h\r\n\r\n",  # a sub-resource
    b"GET /{b}/k HTTP/1.0\r\nHost: h\r\n\r\n",  # HTTP/1.0
    b"GET /{b}/k HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\r\n",  # conditional
    b"GET /{b}/k HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /{b}/k HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",  # obsolete folding
    b"GET /{b}/k HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",  # repeated header
    b"GET /{b}/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",  # a body
])
def test_other_requests_are_handed_over(lane_gateway: Gateway, bucket: str,
                                        request_bytes: bytes) -> None:
    served, handed = _counts(lane_gateway)
    request = request_bytes.replace(b"{b}", bucket.encode())
    got = _exchange(lane_gateway.port, [request])[0]
    assert got.status in (400, 403, 411, 501), got  # unsigned: the full stack refuses it
    assert _counts(lane_gateway) == (served, handed + 1)


def test_keep_alive_then_handover_on_the_same_connection(lane_gateway: Gateway, s3,
                                                         bucket: str) -> None:
    """GETs and PUTs on one connection stay in the lane; a listing moves the connection
    to aiohttp, which then serves it and the requests that follow, in order."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"first")
    port = lane_gateway.port
    path = object_path(bucket, "k")
    served, handed = _counts(lane_gateway)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(_signed("GET", path, port))
            assert _read_response(sock, "GET").body == b"first"
        sock.sendall(_signed("PUT", path, port, body=b"second"))
        assert _read_response(sock, "PUT").status == 200
        sock.sendall(_signed("GET", path, port))
        assert _read_response(sock, "GET").body == b"second"
        assert _counts(lane_gateway) == (served + 5, handed)
        sock.sendall(_signed("GET", f"/{bucket}", port))
        listing = _read_response(sock, "GET")
        assert listing.status == 200 and b"<Key>k</Key>" in listing.body
        sock.sendall(_signed("PUT", path, port, body=b"third"))
        assert _read_response(sock, "PUT").status == 200
        sock.sendall(_signed("GET", path, port))
        assert _read_response(sock, "GET").body == b"third"
    assert _counts(lane_gateway) == (served + 5, handed + 1)


def test_pipelined_requests_are_answered_in_order(lane_gateway: Gateway, s3,
                                                  bucket: str) -> None:
    for key in ("one", "two"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    port = lane_gateway.port
    both = _signed("GET", object_path(bucket, "one"), port) + \
        _signed("GET", object_path(bucket, "two"), port)
    answers = _exchange(port, [both], responses=2)
    assert [a.body for a in answers] == [b"one", b"two"]


def test_large_objects_go_to_the_full_stack(lane_gateway: Gateway, s3, bucket: str) -> None:
    body = os.urandom(PACK_THRESHOLD + 1)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    served, handed = _counts(lane_gateway)
    got = _exchange(lane_gateway.port, [_signed("GET", object_path(bucket, "big"),
                                                lane_gateway.port)])[0]
    assert got.status == 200 and got.body == body
    assert _counts(lane_gateway) == (served, handed + 1)


def test_requests_metrics_count_lane_answers(lane_gateway: Gateway, s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="m", Body=b"x")

    def gets_404() -> float:
        text = _metrics(lane_gateway)
        match = re.search(r'^petrel_requests_total\{operation="get_object",status="404"\} '
                          r"(\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    before = gets_404()
    _exchange(lane_gateway.port, [_signed("GET", object_path(bucket, "absent"),
                                          lane_gateway.port)])
    assert gets_404() == before + 1


def test_put_matches_the_full_stack(lane_gateway: Gateway, s3, bucket: str) -> None:
    port = lane_gateway.port
    body = os.urandom(10_000)
    path = object_path(bucket, "put/é k")
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    got = _same_answer(lane_gateway, _signed("PUT", path, port, body=body, extra={
        "Content-MD5": md5, "Content-Type": "text/csv", "x-amz-meta-Split": "train"}))
    assert got.status == 200 and got.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    stored = s3.get_object(Bucket=bucket, Key="put/é k")
    assert stored["Body"].read() == body and stored["ContentType"] == "text/csv"
    assert stored["Metadata"] == {"split": "train"}
    signed_hash = _same_answer(lane_gateway, _signed(
        "PUT", object_path(bucket, "sha"), port, body=b"abc",
        payload_hash=hashlib.sha256(b"abc").hexdigest()))
    assert signed_hash.status == 200


@pytest.mark.parametrize("case, code", [
    ("bad md5", "BadDigest"),
    ("malformed md5", "InvalidDigest"),
    ("wrong sha256", "XAmzContentSHA256Mismatch"),
    ("no bucket", "NoSuchBucket"),
    ("bad signature", "SignatureDoesNotMatch"),
    ("big metadata", "MetadataTooLarge"),
])
def test_put_errors_match_the_full_stack_and_store_nothing(
        lane_gateway: Gateway, s3, bucket: str, case: str, code: str) -> None:
    port = lane_gateway.port
    body = b"payload"
    path = object_path(bucket if case != "no bucket" else "no-such-bucket-lane", "e")
    extra: dict[str, str] = {}
    payload_hash, secret = "UNSIGNED-PAYLOAD", SECRET_KEY
    if case == "bad md5":
        extra["Content-MD5"] = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    elif case == "malformed md5":
        extra["Content-MD5"] = "not-base64!"
    elif case == "wrong sha256":
        payload_hash = hashlib.sha256(b"other").hexdigest()
    elif case == "bad signature":
        secret = "wrong"
    elif case == "big metadata":
        extra["x-amz-meta-big"] = "x" * 3000
    request = _signed("PUT", path, port, extra=extra, body=body, payload_hash=payload_hash,
                      secret=secret)
    got = _same_answer(lane_gateway, request)
    assert got.code == code, got
    if case != "no bucket":
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket=bucket, Key="e")
        assert missing.value.response["Error"]["Code"] == "404"


def test_put_body_in_pieces_stays_in_the_lane(lane_gateway: Gateway, s3, bucket: str) -> None:
    body = os.urandom(30_000)
    request = _signed("PUT", object_path(bucket, "pieces"), lane_gateway.port, body=body)
    head_end = request.index(b"\r\n\r\n") + 4
    served, handed = _counts(lane_gateway)
    got = _exchange(lane_gateway.port, [request[:head_end], request[head_end:head_end + 7],
                                        request[head_end + 7:]])[0]
    assert got.status == 200
    assert _counts(lane_gateway) == (served + 1, handed)
    assert s3.get_object(Bucket=bucket, Key="pieces")["Body"].read() == body


def test_a_slow_body_is_awaited_in_the_lane(lane_gateway: Gateway, s3, bucket: str) -> None:
    """A body that pauses (under body_idle_timeout_s) is waited for; one that stalls
    past it is answered RequestTimeout by the lane as by the full stack (that case:
    tests/gateway/test_serve.py::test_inflight_limit_and_stalled_body)."""
    body = os.urandom(5_000)
    request = _signed("PUT", object_path(bucket, "slow"), lane_gateway.port, body=body)
    served, handed = _counts(lane_gateway)
    with socket.create_connection(("127.0.0.1", lane_gateway.port), timeout=10) as sock:
        sock.sendall(request[:-100])
        time.sleep(1.2)  # the lane checks connections every 0.5 s
        sock.sendall(request[-100:])
        assert _read_response(sock, "PUT").status == 200
    assert _counts(lane_gateway) == (served + 1, handed)
    assert s3.get_object(Bucket=bucket, Key="slow")["Body"].read() == body


def test_batch_gets_are_parsed_in_the_lane_when_given_their_bound() -> None:
    """parse_head given the largest batch get body parses a batch get (an empty body
    is no exception); without it, it leaves them to the full stack."""
    for body in (b"", b"xyz"):
        request = (b"POST /bkt?batch-get HTTP/1.1\r\nHost: h\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert parse_head(request, 1024) is None
        parsed = parse_head(request, 1024, batch_bytes_max=4096)
        assert parsed is not None and parsed.method == "POST" and parsed.body == body
    other = b"POST /bkt?delete HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    assert parse_head(other, 1024, batch_bytes_max=4096) is None


def _batch_get_request(bucket: str, port: int,
                       items: list[tuple[str, tuple[int, int | None] | None]]) -> bytes:
    body = wire.encode_get_request(items)
    return _signed("POST", f"/{bucket}?batch-get", port,
                   {"Content-Length": str(len(body)), "Content-Type": wire.CONTENT_TYPE},
                   body=body, payload_hash=hashlib.sha256(body).hexdigest())


def test_batch_get_matches_the_full_stack(lane_gateway: Gateway, s3, bucket: str) -> None:
    """A batch get answered whole in the lane (in whichever process took the
    connection) is byte for byte the full stack's answer: found, missing and ranged
    items, in order."""
    bodies = {f"b/{i:02d}": os.urandom(100 + 997 * i) for i in range(20)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    items: list[tuple[str, tuple[int, int | None] | None]] = \
        [(key, None) for key in reversed(bodies)]
    items += [("b/missing", None), ("b/03", (5, 10)), ("b/01", None)]
    got = _same_answer(lane_gateway, _batch_get_request(bucket, lane_gateway.port, items),
                       method="POST")
    assert got.status == 200 and got.headers["content-type"] == wire.CONTENT_TYPE
    frames = wire.decode(got.body, wire.Kind.GET_RESPONSE)
    assert [(f.key, f.status) for f in frames] == \
        [(key, wire.Status.NOT_FOUND if key == "b/missing" else wire.Status.OK)
         for key, _ in items]
    expected = [bodies[key] for key in reversed(bodies)] + \
        [b"", bodies["b/03"][5:15], bodies["b/01"]]
    assert [bytes(f.data) for f in frames] == expected
    missing = _same_answer(lane_gateway, _batch_get_request("no-such-bucket-lane",
                                                            lane_gateway.port, items),
                           method="POST")
    assert (missing.status, missing.code) == (404, "NoSuchBucket")


def test_a_batch_with_a_large_object_goes_to_the_full_stack(lane_gateway: Gateway, s3,
                                                            bucket: str) -> None:
    small, large = os.urandom(1000), os.urandom(PACK_THRESHOLD + 1)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="large", Body=large)
    served, handed = _counts(lane_gateway)
    response = _exchange(lane_gateway.port, [_batch_get_request(
        bucket, lane_gateway.port, [("small", None), ("large", None)])], method="POST")[0]
    assert _counts(lane_gateway) == (served, handed + 1)
    assert response.status == 200
    frames = wire.decode(response.body, wire.Kind.GET_RESPONSE)
    assert [bytes(f.data) for f in frames] == [small, large]


def test_expect_100_continue_put_stays_in_the_lane(lane_gateway: Gateway, s3,
                                                   bucket: str) -> None:
    """boto3 sends every PutObject with "Expect: 100-continue" and waits for the 100
    before the body: the lane answers it, then takes the body as any other."""
    body = os.urandom(20_000)
    request = _signed("PUT", object_path(bucket, "continue"), lane_gateway.port, body=body,
                      extra={"Expect": "100-continue"})
    head_end = request.index(b"\r\n\r\n") + 4
    served, handed = _counts(lane_gateway)
    with socket.create_connection(("127.0.0.1", lane_gateway.port), timeout=10) as sock:
        sock.sendall(request[:head_end])
        with sock.makefile("rb") as stream:
            assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert stream.readline() == b"\r\n"
            sock.sendall(request[head_end:])
            got = _read_one(stream, "PUT")
    assert got.status == 200 and got.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert _counts(lane_gateway) == (served + 1, handed)
    fresh = make_client(lane_gateway.endpoint)  # a new connection: it starts in the lane
    fresh.put_object(Bucket=bucket, Key="boto3", Body=b"from boto3", Metadata={"a": "b"})
    assert _counts(lane_gateway) == (served + 2, handed)
    stored = s3.get_object(Bucket=bucket, Key="boto3")
    assert stored["Body"].read() == b"from boto3" and stored["Metadata"] == {"a": "b"}
    # Expect on anything but a PUT, or any other expectation: the full stack's.
    other = _signed("GET", object_path(bucket, "boto3"), lane_gateway.port,
                    extra={"Expect": "100-continue"})
    _exchange(lane_gateway.port, [other])
    assert _counts(lane_gateway)[1] == handed + 1
