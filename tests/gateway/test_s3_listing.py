"""ListObjects (v1), ListObjectsV2 and ListObjectVersions with boto3 paginators."""

from __future__ import annotations

import urllib.parse

KEYS = ["a", "a/1", "a/2", "a/b/1", "a/b/2", "b/1", "c", "c d/e", "é/1", "z+z"]


def _fill(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())


def test_list_v2_prefix_delimiter(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    _fill(s3, bucket)
    every = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in every["Contents"]] == sorted(KEYS, key=str.encode)
    assert every["KeyCount"] == len(KEYS)
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a", "c", "z+z"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "c d/", "é/"]
    sub = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in sub["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["a/b/"]


def test_list_v2_pagination(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    _fill(s3, bucket)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                         PaginationConfig={"PageSize": 3})
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == sorted(KEYS, key=str.encode)
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="b/1")
    assert [o["Key"] for o in after["Contents"]] == [k for k in sorted(KEYS, key=str.encode)
                                                     if k.encode() > b"b/1"]


def test_list_v1_pagination(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    _fill(s3, bucket)
    pages = s3.get_paginator("list_objects").paginate(Bucket=bucket, Delimiter="/",
                                                      PaginationConfig={"PageSize": 2})
    keys, prefixes = [], []
    for page in pages:
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == ["a", "c", "z+z"]
    assert prefixes == ["a/", "b/", "c d/", "é/"]


def test_encoding_type_url(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    _fill(s3, bucket)
    # boto3 asks for encoding-type=url by default and decodes the keys itself.
    raw = s3.list_objects_v2(Bucket=bucket, EncodingType="url")
    assert [urllib.parse.unquote(o["Key"]) if "%" in o["Key"] else o["Key"]
            for o in raw["Contents"]] == sorted(KEYS, key=str.encode)


def test_list_object_versions(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    _fill(s3, bucket)
    versions = s3.list_object_versions(Bucket=bucket)
    assert sorted(v["Key"] for v in versions["Versions"]) == sorted(KEYS)
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in versions["Versions"])
    pages = s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 4})
    assert sum(len(p.get("Versions", [])) for p in pages) == len(KEYS)
