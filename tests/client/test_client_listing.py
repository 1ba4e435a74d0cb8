"""list, isdir and get_file_iterator against a live gateway: names relative to the
directory, sub-directories with a trailing '/', pagination past 1000 keys."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator

import pytest

from petrel.client import Client
from petrel.errors import NoSuchBucket

FILES = 1100  # more than one ListObjectsV2 page (1000)
SUBDIRS = 1005


@pytest.fixture(scope="module")
def tree(client: Client, s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """top/: 1100 files, 1005 sub-directories with one file each, and a nested one."""
    from rawhttp import delete_bucket_fully

    bucket = "l-" + uuid.uuid4().hex[:20]
    client.create_bucket(f"s3://{bucket}")
    items: list[tuple[str, bytes]] = []
    items += [(f"s3://{bucket}/top/f{i:05d}", b"f") for i in range(FILES)]
    items += [(f"s3://{bucket}/top/d{i:05d}/inner", b"i") for i in range(SUBDIRS)]
    items += [(f"s3://{bucket}/top/d00000/deeper/x.txt", b"xx"),
              (f"s3://{bucket}/top.txt", b"sibling"),
              (f"s3://{bucket}/other/ü k", b"u")]
    client.put_batch(items)
    yield bucket
    delete_bucket_fully(s3, bucket)


def test_list_is_relative_paginated_and_lazy(client: Client, tree: str) -> None:
    names = client.list(f"s3://{tree}/top")
    assert iter(names) is names  # a generator: nothing listed until asked
    listed = list(names)
    expected = {f"f{i:05d}" for i in range(FILES)} | {f"d{i:05d}/" for i in range(SUBDIRS)}
    assert len(listed) == len(expected)
    assert set(listed) == expected
    assert list(client.list(f"s3://{tree}/top/")) == listed


def test_list_nested_and_root(client: Client, tree: str) -> None:
    assert sorted(client.list(f"s3://{tree}/top/d00000")) == ["deeper/", "inner"]
    assert list(client.list(f"s3://{tree}/top/d00000/deeper/")) == ["x.txt"]
    assert sorted(client.list(f"s3://{tree}")) == ["other/", "top.txt", "top/"]
    assert list(client.list(f"s3://{tree}/other")) == ["ü k"]
    assert list(client.list(f"s3://{tree}/nothing/")) == []


def test_isdir(client: Client, tree: str) -> None:
    assert client.isdir(f"s3://{tree}/top")
    assert client.isdir(f"s3://{tree}/top/")
    assert client.isdir(f"s3://{tree}/top/d00000/deeper")
    assert client.isdir(f"s3://{tree}")
    assert not client.isdir(f"s3://{tree}/top.txt")  # an object, not a directory
    assert not client.isdir(f"s3://{tree}/top/f00000")
    assert not client.isdir(f"s3://{tree}/to")  # a bare prefix is not a directory
    assert not client.isdir(f"s3://nobucket-{uuid.uuid4().hex[:8]}/dir")


def test_get_file_iterator_yields_every_object_below(client: Client, tree: str) -> None:
    found = dict(client.get_file_iterator(f"s3://{tree}/top/d0000"))
    assert len(found) == 10 + 1  # d00000..d00009 each with inner, and deeper/x.txt
    path = f"{tree}/top/d00000/deeper/x.txt"
    info = found[path]
    assert info["Key"] == "top/d00000/deeper/x.txt"
    assert info["Size"] == 2
    assert isinstance(info["LastModified"], datetime.datetime)
    everything = list(client.get_file_iterator(f"s3://{tree}"))
    assert len(everything) == FILES + SUBDIRS + 3
    assert all(path.startswith(f"{tree}/") for path, _ in everything)
    # What petrel_client users do with the path: prefix it with the scheme again.
    assert client.get("s3://" + path) == b"xx"


def test_listing_a_missing_bucket_raises(client: Client) -> None:
    with pytest.raises(NoSuchBucket):
        list(client.get_file_iterator(f"s3://nobucket-{uuid.uuid4().hex[:8]}/"))
