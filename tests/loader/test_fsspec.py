"""petrel:// through fsspec (registered by the `fsspec.specs` entry point) against a real
gateway: round trips, cat of many paths and cat_ranges as batch requests."""

from __future__ import annotations

import hashlib
import os

import fsspec
import pytest
from conftest import Gateway, batch_gets

from petrel.fsspec import PetrelFileSystem


@pytest.fixture
def fs(conf_path: str) -> PetrelFileSystem:
    made = fsspec.filesystem("petrel", conf_path=conf_path, skip_instance_cache=True)
    assert isinstance(made, PetrelFileSystem)
    return made


def test_entry_point_registers_the_protocol() -> None:
    assert fsspec.get_filesystem_class("petrel") is PetrelFileSystem


def test_pipe_cat_open_round_trip(fs: PetrelFileSystem, bucket: str, conf_path: str) -> None:
    data = os.urandom(5000)
    fs.pipe_file(f"{bucket}/dir/a.bin", data)
    assert fs.cat_file(f"petrel://{bucket}/dir/a.bin") == data
    assert fs.cat(f"{bucket}/dir/a.bin") == data
    assert fs.cat_file(f"{bucket}/dir/a.bin", 10, 20) == data[10:20]
    assert fs.cat_file(f"{bucket}/dir/a.bin", -100) == data[-100:]
    assert fs.cat_file(f"{bucket}/dir/a.bin", 4990, 9000) == data[4990:]
    assert fs.cat_file(f"{bucket}/dir/a.bin", 6000, 7000) == b""
    with fsspec.open(f"petrel://{bucket}/dir/a.bin", "rb", conf_path=conf_path) as handle:
        assert handle.read(100) == data[:100]
        handle.seek(4000)
        assert handle.read() == data[4000:]
    with fsspec.open(f"petrel://{bucket}/dir/b.txt", "w", conf_path=conf_path) as handle:
        handle.write("hello petrel\n")
    assert fs.cat(f"{bucket}/dir/b.txt") == b"hello petrel\n"
    with fs.open(f"{bucket}/dir/b.txt", "rt") as text:
        assert text.read() == "hello petrel\n"


def test_metadata(fs: PetrelFileSystem, bucket: str) -> None:
    fs.pipe({f"{bucket}/d/x.bin": b"x" * 10, f"{bucket}/d/sub/y.bin": b"y" * 20,
             f"{bucket}/top.bin": b"t"})
    assert fs.info(f"{bucket}/d/x.bin") == {"name": f"{bucket}/d/x.bin", "size": 10,
                                            "type": "file"}
    assert fs.info(f"{bucket}/d")["type"] == "directory"
    assert fs.info(bucket)["type"] == "directory"
    assert fs.exists(f"{bucket}/d/sub/y.bin")
    assert not fs.exists(f"{bucket}/d/nope")
    assert fs.isdir(f"{bucket}/d/sub") and fs.isfile(f"{bucket}/top.bin")
    assert sorted(fs.ls(f"{bucket}/d", detail=False)) == [f"{bucket}/d/sub", f"{bucket}/d/x.bin"]
    detail = {entry["name"]: entry for entry in fs.ls(f"{bucket}/d")}
    assert detail[f"{bucket}/d/x.bin"]["size"] == 10
    assert detail[f"{bucket}/d/sub"]["type"] == "directory"
    assert f"{bucket}" in fs.ls("", detail=False)
    assert fs.find(bucket) == [f"{bucket}/d/sub/y.bin", f"{bucket}/d/x.bin", f"{bucket}/top.bin"]
    assert fs.glob(f"{bucket}/d/*.bin") == [f"{bucket}/d/x.bin"]
    assert fs.cat(f"{bucket}/d", recursive=True) == {f"{bucket}/d/sub/y.bin": b"y" * 20,
                                                     f"{bucket}/d/x.bin": b"x" * 10}
    with pytest.raises(FileNotFoundError):
        fs.info(f"{bucket}/none")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/none")
    fs.rm(f"{bucket}/d", recursive=True)
    assert fs.find(bucket) == [f"{bucket}/top.bin"]
    fs.rm(f"{bucket}/top.bin")
    assert not fs.exists(f"{bucket}/top.bin")


def test_cat_of_many_paths_is_one_batch_request(fs: PetrelFileSystem, bucket: str,
                                                gateway: Gateway) -> None:
    blobs = {f"{bucket}/many/{i:03d}": os.urandom(100 + i) for i in range(300)}
    fs.pipe(blobs)
    before = batch_gets(gateway)
    got = fs.cat(list(blobs))
    assert batch_gets(gateway) - before == 1
    assert got == blobs
    missing = [*list(blobs)[:2], f"{bucket}/many/none"]
    with pytest.raises(FileNotFoundError):
        fs.cat(missing)
    assert list(fs.cat(missing, on_error="omit")) == missing[:2]
    returned = fs.cat(missing, on_error="return")
    assert isinstance(returned[missing[2]], FileNotFoundError)


def test_cat_ranges_is_one_batch_request(fs: PetrelFileSystem, bucket: str,
                                         gateway: Gateway) -> None:
    blobs = {f"{bucket}/r/{i:03d}": os.urandom(1000) for i in range(50)}
    fs.pipe(blobs)
    paths = [*blobs, f"{bucket}/r/none"]
    starts = [i * 10 for i in range(len(paths))]
    ends = [s + 100 for s in starts]
    before = batch_gets(gateway)
    got = fs.cat_ranges(paths, starts, ends)
    assert batch_gets(gateway) - before == 1
    assert got[:-1] == [blobs[p][s:e] for p, s, e in zip(paths[:-1], starts, ends, strict=False)]
    assert isinstance(got[-1], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(paths, starts, ends, on_error="raise")
    assert fs.cat_ranges(list(blobs)[:2], 0, None) == list(blobs.values())[:2]


def test_open_files_and_checksums(fs: PetrelFileSystem, bucket: str, conf_path: str) -> None:
    blobs = {f"{bucket}/f/{i}.bin": os.urandom(20_000) for i in range(5)}
    fs.pipe(blobs)
    files = fsspec.open_files([f"petrel://{p}" for p in blobs], "rb", conf_path=conf_path)
    for opened, (name, data) in zip(files, blobs.items(), strict=True):
        with opened as handle:
            assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest(), name
