"""petrel's batch API against a live gateway (docs/wire.md): BatchPutObjects then
BatchGetObjects, per-item statuses, ranges, limits, malformed and unsigned bodies.
Requests are signed with botocore's own SigV4 signer, as any S3 request."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request

import pytest
from conftest import Gateway
from rawhttp import ACCESS_KEY, SECRET_KEY, RawResponse, sign

from petrel import format as fmt
from petrel import wire


def post(gateway: Gateway, bucket: str, operation: str, body: bytes, *,
         unsigned_payload: bool = False, secret_key: str = SECRET_KEY,
         signed: bool = True) -> RawResponse:
    url = f"{gateway.endpoint}/{bucket}?{operation}"
    headers = {"Content-Type": wire.CONTENT_TYPE}
    if signed:
        payload_hash = "UNSIGNED-PAYLOAD" if unsigned_payload \
            else hashlib.sha256(body).hexdigest()
        headers = sign("POST", url, ACCESS_KEY, secret_key, headers, payload_hash, body)
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request("POST", f"/{bucket}?{operation}", body=body, headers=headers)
        response = connection.getresponse()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()},
                           response.read())
    finally:
        connection.close()


def batch_put(gateway: Gateway, bucket: str, items: list[tuple[str, bytes, str]],
              **kwargs: object) -> list[wire.Frame]:
    response = post(gateway, bucket, "batch-put", wire.encode_put_request(items), **kwargs)
    assert response.status == 200, response.body
    assert response.headers["content-type"] == wire.CONTENT_TYPE
    return wire.decode(response.body, wire.Kind.PUT_RESPONSE)


def batch_get(gateway: Gateway, bucket: str,
              items: list[tuple[str, tuple[int, int | None] | None]]) -> list[wire.Frame]:
    response = post(gateway, bucket, "batch-get", wire.encode_get_request(items))
    assert response.status == 200, response.body
    return wire.decode(response.body, wire.Kind.GET_RESPONSE)


def test_put_then_get_many_objects_byte_identical(gateway: Gateway, bucket: str, s3) -> None:  # type: ignore[no-untyped-def]
    objects = {f"img/{i:04d}.jpg": os.urandom(1 + i * 37 % 20_000) for i in range(300)}
    put = batch_put(gateway, bucket, [(k, v, "image/jpeg") for k, v in objects.items()])
    assert [f.key for f in put] == list(objects)
    assert all(f.status is wire.Status.OK for f in put)
    assert [bytes(f.aux).decode() for f in put] == \
        [hashlib.md5(v).hexdigest() for v in objects.values()]

    wanted = list(objects)[::-1]
    got = batch_get(gateway, bucket, [(k, None) for k in wanted])
    assert [f.key for f in got] == wanted
    assert all(bytes(f.data) == objects[f.key] for f in got)
    info = wire.parse_info_aux(got[0].aux)
    head = s3.head_object(Bucket=bucket, Key=wanted[0])
    assert info.size == head["ContentLength"] == len(objects[wanted[0]])
    assert f'"{info.etag}"' == head["ETag"]
    assert head["ContentType"] == "image/jpeg"
    # Plain S3 sees the same objects.
    body = s3.get_object(Bucket=bucket, Key="img/0007.jpg")["Body"].read()
    assert body == objects["img/0007.jpg"]


def test_missing_duplicate_and_ranged_items(gateway: Gateway, bucket: str) -> None:
    data = bytes(range(256)) * 4
    batch_put(gateway, bucket, [("a", data, ""), ("b", b"bee", "")])
    got = batch_get(gateway, bucket, [
        ("a", None), ("missing", None), ("a", (10, 5)), ("b", (1, None)),
        ("a", None), ("a", (5000, None)), ("b", (0, 100))])
    assert [f.status for f in got] == [
        wire.Status.OK, wire.Status.NOT_FOUND, wire.Status.OK, wire.Status.OK,
        wire.Status.OK, wire.Status.ERROR, wire.Status.OK]
    assert bytes(got[0].data) == data == bytes(got[4].data)
    assert wire.parse_error_aux(got[1].aux)[0] == "NoSuchKey"
    assert bytes(got[2].data) == data[10:15]
    assert wire.parse_info_aux(got[2].aux).size == len(data)  # the whole object's size
    assert bytes(got[3].data) == b"ee"
    assert wire.parse_error_aux(got[5].aux)[0] == "InvalidRange"
    assert bytes(got[6].data) == b"bee"  # a range past the end is cut at the end


def test_large_objects_travel_in_batches(gateway: Gateway, bucket: str) -> None:
    # The test gateway packs objects up to 64 KiB; bigger ones are stored whole.
    big = os.urandom(200_000)
    put = batch_put(gateway, bucket, [("big", big, ""), ("small", b"s", "")])
    assert [f.status for f in put] == [wire.Status.OK, wire.Status.OK]
    got = batch_get(gateway, bucket, [("small", None), ("big", None), ("big", (199_990, None))])
    assert [bytes(f.data) for f in got] == [b"s", big, big[199_990:]]


def test_a_short_answer_goes_whole_and_a_long_one_is_streamed(gateway: Gateway,
                                                              bucket: str) -> None:
    # An answer whose frames fit RESPONSE_BUFFER_BYTES (16 MiB) once a window of keys
    # (WINDOW_ITEMS, 64) is read is one body with a length; a longer one is streamed in
    # chunks, window by window.
    chunk = os.urandom(300 * 1024)
    keys = [f"big-{i:02d}" for i in range(70)]
    for start in range(0, len(keys), 35):
        batch_put(gateway, bucket, [(k, k.encode() + chunk, "") for k in keys[start:start + 35]])
    short = post(gateway, bucket, "batch-get", wire.encode_get_request([(keys[0], None)]))
    assert short.headers["content-length"] == str(len(short.body))
    assert "transfer-encoding" not in short.headers
    body = wire.encode_get_request([(k, None) for k in keys])
    long = post(gateway, bucket, "batch-get", body)
    assert long.status == 200 and long.headers.get("transfer-encoding") == "chunked"
    got = wire.decode(long.body, wire.Kind.GET_RESPONSE)
    assert [bytes(f.data) for f in got] == [k.encode() + chunk for k in keys]


def _bytes_sent(gateway: Gateway) -> float:
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("petrel_bytes_sent_total"))


def test_a_whole_answer_is_sent_as_declared_and_counted(gateway: Gateway, bucket: str) -> None:
    # A whole answer goes out as its pieces (frame headers and payloads, unjoined):
    # its Content-Length must match what arrives, and the metrics count it.
    objects = {f"w-{i:03d}": os.urandom(1000 + 37 * i) for i in range(200)}
    batch_put(gateway, bucket, [(k, v, "") for k, v in objects.items()])
    before = _bytes_sent(gateway)
    response = post(gateway, bucket, "batch-get",
                    wire.encode_get_request([(k, None) for k in objects]))
    assert response.status == 200
    assert response.headers["content-length"] == str(len(response.body))
    got = wire.decode(response.body, wire.Kind.GET_RESPONSE)
    assert {f.key: bytes(f.data) for f in got} == objects
    assert _bytes_sent(gateway) - before >= len(response.body)


def test_per_item_errors_do_not_fail_the_batch(gateway: Gateway, bucket: str) -> None:
    put = batch_put(gateway, bucket, [("ok-1", b"1", ""), ("k" * 1025, b"2", ""),
                                      ("ok-2", b"3", "")])
    assert [f.status for f in put] == [wire.Status.OK, wire.Status.ERROR, wire.Status.OK]
    assert wire.parse_error_aux(put[1].aux)[0] == "KeyTooLongError"
    got = batch_get(gateway, bucket, [("ok-1", None), ("ok-2", None)])
    assert [bytes(f.data) for f in got] == [b"1", b"3"]


def test_unsigned_payload_put_is_accepted(gateway: Gateway, bucket: str) -> None:
    put = batch_put(gateway, bucket, [("u", b"unsigned body", "")], unsigned_payload=True)
    assert put[0].status is wire.Status.OK
    assert bytes(batch_get(gateway, bucket, [("u", None)])[0].data) == b"unsigned body"


def test_too_many_items_is_refused_whole(gateway: Gateway, bucket: str) -> None:
    body = wire.encode_get_request([(f"k{i}", None) for i in range(1001)])
    response = post(gateway, bucket, "batch-get", body)
    assert (response.status, response.code) == (400, "InvalidRequest")
    body = wire.encode_put_request([(f"k{i}", b"x", "") for i in range(1001)])
    response = post(gateway, bucket, "batch-put", body)
    assert (response.status, response.code) == (400, "InvalidRequest")
    body = wire.encode_get_request([(f"k{i}", None) for i in range(1001)])
    response = post(gateway, bucket, "batch-locate", body)
    assert (response.status, response.code) == (400, "InvalidRequest")
    assert batch_get(gateway, bucket, [("k0", None)])[0].status is wire.Status.NOT_FOUND


def _damaged(body: bytes, damage: str, *, flip_at: int, other_kind: bytes) -> bytes:
    """`body` cut short, with one bit flipped at `flip_at`, replaced by something that
    is not a batch, or by `other_kind` (a well-formed batch of another kind)."""
    if damage == "truncated":
        return body[:-20]
    if damage == "flipped":
        return body[:flip_at] + bytes([body[flip_at] ^ 0x10]) + body[flip_at + 1:]
    if damage == "not-a-batch":
        return b"<xml/>"
    return other_kind


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-a-batch", "wrong-kind"])
def test_malformed_put_body_stores_nothing(gateway: Gateway, bucket: str, damage: str) -> None:
    body = _damaged(wire.encode_put_request([(f"m{i}", b"payload %d" % i, "")
                                             for i in range(10)]),
                    damage, flip_at=-60, other_kind=wire.encode_get_request([("m0", None)]))
    response = post(gateway, bucket, "batch-put", body)
    assert (response.status, response.code) == (400, "MalformedBatch")
    got = batch_get(gateway, bucket, [(f"m{i}", None) for i in range(10)])
    assert all(f.status is wire.Status.NOT_FOUND for f in got)


def test_missing_bucket_fails_the_whole_request(gateway: Gateway) -> None:
    body = wire.encode_get_request([("a", None)])
    response = post(gateway, "no-such-bucket-here", "batch-get", body)
    assert (response.status, response.code) == (404, "NoSuchBucket")
    body = wire.encode_put_request([("a", b"x", "")])
    response = post(gateway, "no-such-bucket-here", "batch-put", body)
    assert (response.status, response.code) == (404, "NoSuchBucket")
    body = wire.encode_get_request([("a", None)])
    response = post(gateway, "no-such-bucket-here", "batch-locate", body)
    assert (response.status, response.code) == (404, "NoSuchBucket")


@pytest.mark.parametrize("operation", ["batch-get", "batch-put", "batch-locate"])
def test_batch_requests_need_a_valid_signature(gateway: Gateway, bucket: str,
                                               operation: str) -> None:
    body = wire.encode_put_request([("x", b"x", "")]) if operation == "batch-put" \
        else wire.encode_get_request([("x", None)])
    anonymous = post(gateway, bucket, operation, body, signed=False)
    assert (anonymous.status, anonymous.code) == (403, "AccessDenied")
    forged = post(gateway, bucket, operation, body, secret_key="not-the-secret-key-000000")
    assert (forged.status, forged.code) == (403, "SignatureDoesNotMatch")
    tampered_hash = hashlib.sha256(body).hexdigest()
    url = f"{gateway.endpoint}/{bucket}?{operation}"
    headers = sign("POST", url, ACCESS_KEY, SECRET_KEY, {"Content-Type": wire.CONTENT_TYPE},
                   tampered_hash, body)
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        # The signed hash is of `body`; a different body of the same length is refused.
        other = body[:-1] + bytes([body[-1] ^ 1])
        connection.request("POST", f"/{bucket}?{operation}", body=other, headers=headers)
        response = connection.getresponse()
        assert response.status == 400
        assert b"XAmzContentSHA256Mismatch" in response.read()
    finally:
        connection.close()


def test_locate_answers_where_each_record_is(gateway: Gateway, bucket: str) -> None:
    """A batch locate names the segment files and, per key, the record's place: read at
    that place, each record is the object's (its checksum and key); what the gateway
    would have to read itself (a large object), a range past the end, and an invalid
    key are FETCH; a missing key NOT_FOUND. The FILE frames' device and inode are the
    files'."""
    objects = {f"loc/{i:03d}": os.urandom(100 + i * 41) for i in range(60)}
    batch_put(gateway, bucket, [(k, v, "") for k, v in objects.items()])
    batch_put(gateway, bucket, [("huge", os.urandom(1024 * 1024 + 1), "")])
    asked: list[tuple[str, tuple[int, int | None] | None]] = \
        [(k, None) for k in objects] + [("loc/007", (5, 10)), ("nope", None),
                                        ("huge", None), ("loc/001", (10**6, None)),
                                        ("k" * 1100, None)]
    response = post(gateway, bucket, "batch-locate", wire.encode_get_request(asked))
    assert response.status == 200, response.body
    assert response.headers["content-type"] == wire.CONTENT_TYPE
    files, entries = wire.decode_locate_response(response.body, len(asked))
    assert [entry[6] for entry in entries[-4:]] == \
        [wire.Where.NOT_FOUND, wire.Where.FETCH, wire.Where.FETCH, wire.Where.FETCH]
    for file in files.values():
        status = os.stat(file.path)
        assert os.path.isabs(file.path) and (status.st_dev, status.st_ino) == \
            (file.device, file.inode)
    for (key, byte_range), entry in zip(asked[:-4], entries, strict=False):
        segment_id, offset, length, checksum, start, count, where = entry
        assert where == wire.Where.LOCATED
        with open(files[segment_id].path, "rb") as handle:
            handle.seek(offset)
            record = handle.read(length)
        location = fmt.Location(segment_id, 0, length, checksum)
        payload = fmt.verified_payload(record, 0, location, f"{bucket}/{key}".encode())
        assert payload == objects[key]
        assert (start, count) == ((5, 10) if byte_range else (0, len(objects[key])))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-a-batch", "wrong-kind"])
def test_malformed_locate_body_is_refused(gateway: Gateway, bucket: str, damage: str) -> None:
    body = _damaged(wire.encode_get_request([(f"m{i}", None) for i in range(10)]), damage,
                    flip_at=-40, other_kind=wire.encode_put_request([("m0", b"x", "")]))
    response = post(gateway, bucket, "batch-locate", body)
    assert (response.status, response.code) == (400, "MalformedBatch")
