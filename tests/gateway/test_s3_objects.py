"""PutObject, GetObject (ranges, conditionals, response overrides), HeadObject,
DeleteObject, DeleteObjects, CopyObject, metadata, Content-MD5, with boto3."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os

import pytest
from botocore.exceptions import ClientError


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_put_get_head_delete(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(10_000)
    put = s3.put_object(Bucket=bucket, Key="dir/a b+c%ü.bin", Body=body,
                        ContentType="image/jpeg", Metadata={"origin": "cam-1"})
    assert put["ETag"] == '"' + hashlib.md5(body).hexdigest() + '"'
    got = s3.get_object(Bucket=bucket, Key="dir/a b+c%ü.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/jpeg"
    assert got["Metadata"] == {"origin": "cam-1"}
    assert got["ETag"] == put["ETag"] and got["ContentLength"] == len(body)
    head = s3.head_object(Bucket=bucket, Key="dir/a b+c%ü.bin")
    assert head["ContentLength"] == len(body) and head["ETag"] == put["ETag"]
    s3.delete_object(Bucket=bucket, Key="dir/a b+c%ü.bin")
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="dir/a b+c%ü.bin")
    assert _code(error) == "NoSuchKey"
    with pytest.raises(ClientError) as error:
        s3.head_object(Bucket=bucket, Key="dir/a b+c%ü.bin")
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.delete_object(Bucket=bucket, Key="never-existed")  # 204, as S3


def test_default_content_type_and_empty_object(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert got["Body"].read() == b"" and got["ContentLength"] == 0
    assert got["ContentType"] == "binary/octet-stream"


@pytest.mark.parametrize("size", [100, 64 * 1024 + 1, 3 * 1024 * 1024])
def test_sizes_packed_and_large(s3, bucket, size) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(size)
    s3.put_object(Bucket=bucket, Key=f"obj-{size}", Body=body)
    assert s3.get_object(Bucket=bucket, Key=f"obj-{size}")["Body"].read() == body
    part = s3.get_object(Bucket=bucket, Key=f"obj-{size}", Range="bytes=50-99")
    assert part["Body"].read() == body[50:100]
    assert part["ContentRange"] == f"bytes 50-99/{size}"


def test_ranges(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    body = bytes(range(256)) * 10
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    cases = {"bytes=0-0": body[:1], "bytes=10-": body[10:], "bytes=-5": body[-5:],
             "bytes=2500-99999": body[2500:]}
    for header, expected in cases.items():
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == expected, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=5000-6000")
    assert _code(error) == "InvalidRange"


def test_conditional_get(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"x")
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"x"
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert _code(error) == "PreconditionFailed"
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert _code(error) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"x"


def test_response_overrides(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="text/csv",
                        ResponseContentDisposition="attachment; filename=o.csv",
                        ResponseCacheControl="no-cache")
    assert got["ContentType"] == "text/csv"
    assert got["ContentDisposition"] == "attachment; filename=o.csv"
    assert got["CacheControl"] == "no-cache"


def test_content_md5(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    body = b"checked"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=bucket, Key="m", Body=body, ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as error:
        s3.put_object(Bucket=bucket, Key="m2", Body=body, ContentMD5=bad)
    assert _code(error) == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="m2")


def test_delete_objects(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"1")
    result = s3.delete_objects(Bucket=bucket, Delete={
        "Objects": [{"Key": f"d/{i}"} for i in range(7)]})
    assert sorted(d["Key"] for d in result["Deleted"]) == [f"d/{i}" for i in range(7)]
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x"}], "Quiet": True})
    assert "Deleted" not in quiet


def test_copy_object(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="src", Body=b"data", ContentType="text/plain",
                  Metadata={"a": "1"})
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == '"' + hashlib.md5(b"data").hexdigest() + '"'
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", ContentType="application/json",
                   Metadata={"b": "2"})
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["ContentType"] == "application/json" and head["Metadata"] == {"b": "2"}
    with pytest.raises(ClientError) as error:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert _code(error) == "InvalidRequest"
    with pytest.raises(ClientError) as error:
        s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/missing")
    assert _code(error) == "NoSuchKey"


def test_request_id_on_every_response(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    put = s3.put_object(Bucket=bucket, Key="i", Body=b"1")
    assert put["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="missing")
    assert error.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert error.value.response["Error"]["Message"]


def test_version_ids(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="v", Body=b"1")
    assert s3.get_object(Bucket=bucket, Key="v", VersionId="null")["Body"].read() == b"1"
    with pytest.raises(ClientError) as error:
        s3.delete_object(Bucket=bucket, Key="v", VersionId="3HL4kqtJlcpXroDTDmJ")
    assert _code(error) == "InvalidArgument"
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"1"
