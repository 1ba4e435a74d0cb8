"""petrel.Client's single-object methods against a live gateway, with petrel_client's
semantics: None for a missing object or bucket, put returns the byte count, keyword
arguments of petrel_client accepted."""

from __future__ import annotations

import io
import uuid

import pytest
import urllib3

from petrel.client import Client, InvalidUrl, StreamingBody
from petrel.errors import BucketAlreadyOwnedByYou, NoSuchBucket, NoSuchKey

PETREL_CLIENT_KWARGS = {"no_cache": True, "update_cache": True, "enable_etag": True,
                        "enable_mc": True}


def test_put_get_roundtrip(client: Client, bucket: str, s3) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket}/dir/a b/ü.bin"
    assert client.put(url, b"\x00\x01data") == 6
    assert client.get(url) == b"\x00\x01data"
    assert client.Get(url) == b"\x00\x01data"
    # boto3 sees the same object under the same key: the path encoding is right.
    assert s3.get_object(Bucket=bucket, Key="dir/a b/ü.bin")["Body"].read() == b"\x00\x01data"


def test_put_accepts_str_and_files(client: Client, bucket: str) -> None:
    assert client.put(f"s3://{bucket}/s", "héllo") == len("héllo".encode())
    assert client.get(f"s3://{bucket}/s") == "héllo".encode()
    assert client.put(f"s3://{bucket}/f", io.BytesIO(b"from a file")) == 11
    assert client.get(f"s3://{bucket}/f") == b"from a file"
    assert client.put(f"s3://{bucket}/t", io.StringIO("text file")) == 9
    assert client.put(f"s3://{bucket}/m", memoryview(b"view")) == 4
    assert client.get(f"s3://{bucket}/m") == b"view"
    with pytest.raises(TypeError):
        client.put(f"s3://{bucket}/x", 12)  # type: ignore[arg-type]


def test_missing_object_and_bucket_read_as_none(client: Client, bucket: str) -> None:
    assert client.get(f"s3://{bucket}/missing") is None
    assert client.get(f"s3://nobucket-{uuid.uuid4().hex[:8]}/key") is None
    assert client.get_with_info(f"s3://{bucket}/missing") == (None, {})
    assert not client.contains(f"s3://{bucket}/missing")
    assert not client.contains(f"s3://nobucket-{uuid.uuid4().hex[:8]}/key")
    with pytest.raises(NoSuchKey):
        client.size(f"s3://{bucket}/missing")


def test_info_size_contains_delete(client: Client, bucket: str, s3) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket}/obj"
    written, put_info = client.put_with_info(url, b"x" * 1000)
    assert written == 1000
    data, info = client.get_with_info(url, enable_etag=True)
    assert data == b"x" * 1000
    assert info["etag"] == put_info["etag"] == s3.head_object(Bucket=bucket, Key="obj")[
        "ETag"].strip('"')
    assert info["size"] == 1000
    assert client.size(url) == 1000
    assert client.contains(url)
    assert not client.contains(f"s3://{bucket}/ob")  # a prefix is not an object
    assert not client.contains(f"s3://{bucket}")
    client.delete(url)
    assert not client.contains(url)
    assert client.get(url) is None
    client.delete(url)  # deleting what is gone is not an error, as in S3


def test_petrel_client_keyword_arguments_accepted(conf_path, bucket: str) -> None:  # type: ignore[no-untyped-def]
    client = Client(conf_path=str(conf_path), enable_mc=True, boto=True, anything="at all")
    url = f"s3://{bucket}/kw"
    assert client.put(url, b"kw", **PETREL_CLIENT_KWARGS) == 2
    assert client.get(url, **PETREL_CLIENT_KWARGS) == b"kw"
    assert client.get_with_info(url, **PETREL_CLIENT_KWARGS)[0] == b"kw"
    assert client.contains(url, **PETREL_CLIENT_KWARGS)
    assert client.isdir(f"s3://{bucket}", **PETREL_CLIENT_KWARGS)
    assert list(client.list(f"s3://{bucket}", **PETREL_CLIENT_KWARGS)) == ["kw"]
    client.delete(url, **PETREL_CLIENT_KWARGS)


def test_enable_stream_returns_a_stream(client: Client, bucket: str) -> None:
    payload = bytes(range(256)) * 1024
    client.put(f"s3://{bucket}/big", payload)
    body = client.get(f"s3://{bucket}/big", enable_stream=True)
    assert isinstance(body, StreamingBody)
    assert b"".join(body.iter_chunks(10_000)) == payload
    with client.get(f"s3://{bucket}/big", enable_stream=True) as body:
        assert body.read(5) == payload[:5]
        assert body.read() == payload[5:]
    client.put(f"s3://{bucket}/lines", b"a\nbb\r\nccc")
    lines = list(client.get(f"s3://{bucket}/lines", enable_stream=True).iter_lines(2))
    assert lines == [b"a", b"bb", b"ccc"]
    assert client.get(f"s3://{bucket}/nothing", enable_stream=True) is None


def test_create_bucket(client: Client, s3) -> None:  # type: ignore[no-untyped-def]
    name = "cb-" + uuid.uuid4().hex[:16]
    client.create_bucket(f"s3://{name}")
    try:
        assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert f"{name}/" in list(client.list("s3://"))
        with pytest.raises(BucketAlreadyOwnedByYou):
            client.create_bucket(f"local:s3://{name}/")
    finally:
        s3.delete_bucket(Bucket=name)


def test_errors_carry_s3_codes(client: Client) -> None:
    with pytest.raises(NoSuchBucket) as caught:
        list(client.list(f"s3://nobucket-{uuid.uuid4().hex[:8]}/dir/"))
    assert caught.value.code == "NoSuchBucket"
    with pytest.raises(InvalidUrl):
        client.get("s3://bucket-only")
    with pytest.raises(InvalidUrl):
        client.get("/local/path")


def test_presigned_get_and_put(client: Client, bucket: str) -> None:
    http = urllib3.PoolManager()
    put_url = client.generate_presigned_url(f"s3://{bucket}/pre/sí gned", "put_object", 60)
    answer = http.request("PUT", put_url, body=b"presigned body")
    assert answer.status == 200, answer.data
    get_url = client.generate_presigned_url(f"s3://{bucket}/pre/sí gned")
    assert "X-Amz-Signature=" in get_url and "X-Amz-Expires=3600" in get_url
    answer = http.request("GET", get_url)
    assert answer.status == 200
    assert answer.data == b"presigned body"
    tampered = get_url.replace("pre/", "pro/")
    assert http.request("GET", tampered).status == 403
    with pytest.raises(ValueError, match="client_method"):
        client.generate_presigned_url(f"s3://{bucket}/k", "copy_object")
