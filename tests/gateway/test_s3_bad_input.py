"""Bad input gets its S3 error and changes nothing: short and long bodies, truncated
aws-chunked streams, bad XML, invalid keys and names, oversized headers."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from botocore.exceptions import ClientError
from rawhttp import ACCESS_KEY, SECRET_KEY, object_path, send, sign


def _absent(s3, bucket: str, key: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        return error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return False


def _signed_put(gateway, bucket: str, key: str, body: bytes, payload_hash: str,
                extra: dict[str, str] | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    url = f"{gateway.endpoint}{object_path(bucket, key)}"
    headers = {"Content-Length": str(len(body)), **(extra or {})}
    return sign("PUT", url, ACCESS_KEY, SECRET_KEY, headers, payload_hash)


def test_body_shorter_than_content_length(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    body = b"x" * 1000
    headers = _signed_put(gateway, bucket, "short", body, "UNSIGNED-PAYLOAD")
    try:
        response = send(gateway.port, "PUT", object_path(bucket, "short"), headers,
                        body[:400], shutdown_write=True)
    except ConnectionError:
        pass  # the server may drop a connection whose client closed mid-body
    else:
        assert response.status == 400 and response.code == "IncompleteBody"
    assert _absent(s3, bucket, "short")


def test_body_not_matching_signed_payload_hash(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    body = b"y" * 100
    declared = hashlib.sha256(body + b"extra").hexdigest()  # signed for a longer body
    headers = _signed_put(gateway, bucket, "long", body, declared)
    response = send(gateway.port, "PUT", object_path(bucket, "long"), headers, body)
    assert response.status == 400 and response.code == "XAmzContentSHA256Mismatch"
    assert _absent(s3, bucket, "long")


def _chunked(payload: bytes, cut: int | None = None) -> bytes:
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    body = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n"
    body += f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    return body if cut is None else body[:cut]


def _chunked_headers(gateway, bucket, key, body: bytes, decoded: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return _signed_put(gateway, bucket, key, body, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", {
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(decoded),
        "x-amz-trailer": "x-amz-checksum-crc32"})


def test_aws_chunked_round_trip_and_truncation(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    payload = b"chunked payload " * 100
    body = _chunked(payload)
    headers = _chunked_headers(gateway, bucket, "whole", body, len(payload))
    response = send(gateway.port, "PUT", object_path(bucket, "whole"), headers, body)
    assert response.status == 200, response.body
    assert s3.get_object(Bucket=bucket, Key="whole")["Body"].read() == payload
    # The stream stops mid-chunk: the connection closes before the declared length.
    cut = _chunked(payload, cut=len(body) // 2)
    headers = _chunked_headers(gateway, bucket, "cut", body, len(payload))
    try:
        response = send(gateway.port, "PUT", object_path(bucket, "cut"), headers, cut,
                        shutdown_write=True)
    except ConnectionError:
        pass  # dropped with its client, as above
    else:
        assert response.status == 400 and response.code == "IncompleteBody"
    assert _absent(s3, bucket, "cut")
    # Content-Length covers only part of the chunked stream: a truncated stream.
    headers = _chunked_headers(gateway, bucket, "cut2", cut, len(payload))
    response = send(gateway.port, "PUT", object_path(bucket, "cut2"), headers, cut)
    assert response.status == 400 and response.code == "IncompleteBody"
    assert _absent(s3, bucket, "cut2")
    # A complete stream whose chunks add up to less than the decoded length.
    headers = _chunked_headers(gateway, bucket, "liar", body, len(payload) + 10)
    response = send(gateway.port, "PUT", object_path(bucket, "liar"), headers, body)
    assert response.status == 400 and response.code == "IncompleteBody"
    assert _absent(s3, bucket, "liar")
    # A trailer checksum that does not match the data.
    bad = body.replace(payload[:5], b"XXXXX", 1)
    headers = _chunked_headers(gateway, bucket, "bad", bad, len(payload))
    response = send(gateway.port, "PUT", object_path(bucket, "bad"), headers, bad)
    assert response.status == 400 and response.code == "BadDigest"
    assert _absent(s3, bucket, "bad")


def test_malformed_delete_objects_xml(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="keep", Body=b"1")
    for body in (b"<Delete><Object><Key>keep</Key>", b"not xml at all",
                 b'<!DOCTYPE x [<!ENTITY e "keep">]><Delete><Object><Key>&e;</Key>'
                 b"</Object></Delete>",
                 b"<Other/>"):
        url = f"{gateway.endpoint}/{bucket}?delete"
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        headers = sign("POST", url, ACCESS_KEY, SECRET_KEY,
                       {"Content-Length": str(len(body)), "Content-MD5": md5},
                       hashlib.sha256(body).hexdigest(), body)
        response = send(gateway.port, "POST", f"/{bucket}?delete", headers, body)
        assert response.status == 400 and response.code == "MalformedXML", body
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"1"


def test_key_too_long(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="k" * 1024, Body=b"max")
    with pytest.raises(ClientError) as error:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert error.value.response["Error"]["Code"] == "KeyTooLongError"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["k" * 1024]


def test_metadata_too_large(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as error:
        s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata={"big": "v" * 3000})
    assert error.value.response["Error"]["Code"] == "MetadataTooLarge"
    assert _absent(s3, bucket, "m")


def test_oversized_header_refused(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    url = f"{gateway.endpoint}{object_path(bucket, 'h')}"
    headers = sign("PUT", url, ACCESS_KEY, SECRET_KEY,
                   {"Content-Length": "1", "x-amz-meta-huge": "v" * 20_000}, "UNSIGNED-PAYLOAD")
    response = send(gateway.port, "PUT", object_path(bucket, "h"), headers, b"1")
    assert response.status in (400, 431)
    assert _absent(s3, bucket, "h")


def test_unsupported_subresource(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as error:
        s3.get_bucket_policy(Bucket=bucket)
    assert error.value.response["Error"]["Code"] == "NotImplemented"
