"""The everyday commands (`ls`, `cp`, `cat`, `rm`, `stat`, `mb`, `rb`) run as a user runs
them: a subprocess, a real gateway on loopback, a HOME with a petreloss.conf. What they
write or delete is checked independently with boto3; user errors exit 1 (or 2 for
usage) with a message naming the object, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from petrel.testing.gateway import Gateway, start_gateway, stop_gateway

ACCESS_KEY = "PKFILESTESTKEY000001"
SECRET_KEY = "files-test-secret-0123456789abcdefghi"
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = str(tmp_path_factory.mktemp("files-gateway") / "data")
    running = start_gateway(data_dir, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


@pytest.fixture
def home(tmp_path: Path, gateway: Gateway) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "petreloss.conf").write_text(_conf(gateway, "local", default=True))
    return home


def _conf(gateway: Gateway, cluster: str, *, default: bool) -> str:
    head = f"[DEFAULT]\ndefault_cluster = {cluster}\n" if default else ""
    return (f"{head}[{cluster}]\nhost_base = {gateway.endpoint}\n"
            f"access_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\n")


@pytest.fixture(scope="module")
def s3(gateway: Gateway) -> Any:
    return boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = "files-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


def petrel(home: Path, *args: str, stdin: bytes | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([sys.executable, "-m", "petrel", *args], capture_output=True,
                          input=stdin if stdin is not None else b"", timeout=RUN_TIMEOUT_S,
                          cwd=cwd, env={**os.environ, "HOME": str(home)})
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done


def text(done: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return done.stdout.decode(), done.stderr.decode()


def put(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [entry["Key"] for entry in page.get("Contents", [])]
    return found


def body(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


# ----- ls --------------------------------------------------------------------------------
def test_ls(home: Path, s3: Any, bucket: str) -> None:
    put(s3, bucket, {"img/a.jpg": b"x" * 10, "img/sub/b.jpg": b"y" * 2000, "top.txt": b"t",
                     "img2/c": b""})
    out, _ = text(buckets := petrel(home, "ls"))
    assert buckets.returncode == 0 and any(line.endswith(f" {bucket}")
                                           for line in out.splitlines())
    done = petrel(home, "ls", f"s3://{bucket}")
    out, _ = text(done)
    lines = out.splitlines()
    assert done.returncode == 0
    assert [line.split()[-2:] for line in lines if "PRE" in line] == [["PRE", "img/"],
                                                                      ["PRE", "img2/"]]
    assert lines[-1].split()[-2:] == ["1", "top.txt"]
    out, _ = text(petrel(home, "ls", f"s3://{bucket}/img/"))
    assert [line.split()[-2:] for line in out.splitlines()] == [["PRE", "sub/"],
                                                                ["10", "a.jpg"]]
    done = petrel(home, "ls", "-r", f"s3://{bucket}/img", "--summarize")
    out, _ = text(done)
    assert [line.split()[-1] for line in out.splitlines()[:3]] == [
        "img/a.jpg", "img/sub/b.jpg", "img2/c"]
    assert "Total Objects: 3" in out and "Total Size: 2010" in out


def test_ls_errors(home: Path, bucket: str) -> None:
    missing = petrel(home, "ls", "s3://no-such-bucket-ls")
    assert missing.returncode == 1
    assert "no such bucket: s3://no-such-bucket-ls" in text(missing)[1]
    empty = petrel(home, "ls", f"s3://{bucket}/nothing/")
    assert empty.returncode == 1 and f"nothing under s3://{bucket}/nothing/" in text(empty)[1]
    bad = petrel(home, "ls", "/not/a/url")
    assert bad.returncode == 2 and "is not a [cluster:]s3://" in text(bad)[1]


def test_conf_and_cluster_options(tmp_path: Path, gateway: Gateway, s3: Any,
                                  bucket: str) -> None:
    """A conf elsewhere, with no default cluster: --conf + --cluster, or the URL's
    `cluster:` prefix; a HOME without any petreloss.conf gives a clear error."""
    conf = tmp_path / "other.conf"
    conf.write_text(_conf(gateway, "far", default=False))
    put(s3, bucket, {"k": b"v"})
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    by_option = petrel(empty_home, "cat", "--conf", str(conf), "--cluster", "far",
                       f"s3://{bucket}/k")
    assert by_option.returncode == 0 and by_option.stdout == b"v"
    by_prefix = petrel(empty_home, "cat", "--conf", str(conf), f"far:s3://{bucket}/k")
    assert by_prefix.returncode == 0 and by_prefix.stdout == b"v"
    no_default = petrel(empty_home, "cat", "--conf", str(conf), f"s3://{bucket}/k")
    assert no_default.returncode == 1 and "default_cluster" in text(no_default)[1]
    no_conf = petrel(empty_home, "ls")
    assert no_conf.returncode == 1 and "petreloss.conf" in text(no_conf)[1]


# ----- cat, stat -------------------------------------------------------------------------
def test_cat_is_binary_safe(home: Path, s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * 50 + b"\r\n\x00\xff" + os.urandom(3 * 1024 * 1024)
    put(s3, bucket, {"blob": data, "small": b"hello\n"})
    done = petrel(home, "cat", f"s3://{bucket}/blob", f"s3://{bucket}/small")
    assert done.returncode == 0 and done.stdout == data + b"hello\n"
    missing = petrel(home, "cat", f"s3://{bucket}/nope")
    assert missing.returncode == 1
    assert text(missing)[1].strip() == f"petrel cat: no such object: s3://{bucket}/nope"


def test_stat(home: Path, s3: Any, bucket: str) -> None:
    document = b'{"a": 1}'
    s3.put_object(Bucket=bucket, Key="dir/x.json", Body=document,
                  ContentType="application/json")
    head = s3.head_object(Bucket=bucket, Key="dir/x.json")
    done = petrel(home, "stat", f"s3://{bucket}/dir/x.json")
    out, _ = text(done)
    assert done.returncode == 0
    assert f"URL:           s3://{bucket}/dir/x.json" in out
    assert "Size:          8" in out
    assert f"ETag:          {hashlib.md5(document).hexdigest()}" in out
    assert "Content type:  application/json" in out
    modified = head["LastModified"].isoformat()
    assert f"Last modified: {modified}" in out
    as_json = json.loads(text(petrel(home, "stat", "--json", f"s3://{bucket}/dir/x.json"))[0])
    assert as_json["size"] == 8 and as_json["etag"] == head["ETag"].strip('"')
    missing = petrel(home, "stat", f"s3://{bucket}/dir/nope")
    assert missing.returncode == 1 and f"no such object: s3://{bucket}/dir/nope" in \
        text(missing)[1]
    prefix = petrel(home, "stat", f"s3://{bucket}/dir")
    assert prefix.returncode == 1 and "is a prefix, not an object" in text(prefix)[1]


# ----- cp --------------------------------------------------------------------------------
def test_cp_one_file_both_ways(home: Path, tmp_path: Path, s3: Any, bucket: str) -> None:
    src = tmp_path / "photo.jpg"
    data = os.urandom(5000)
    src.write_bytes(data)
    up = petrel(home, "cp", str(src), f"s3://{bucket}/pics/")
    assert up.returncode == 0, up.stderr
    assert body(s3, bucket, "pics/photo.jpg") == data
    assert petrel(home, "cp", str(src), f"s3://{bucket}/renamed.jpg").returncode == 0
    assert body(s3, bucket, "renamed.jpg") == data

    down = tmp_path / "down"
    down.mkdir()
    assert petrel(home, "cp", f"s3://{bucket}/pics/photo.jpg", str(down)).returncode == 0
    assert (down / "photo.jpg").read_bytes() == data
    assert petrel(home, "cp", f"s3://{bucket}/pics/photo.jpg",
                  str(down / "other.bin")).returncode == 0
    assert (down / "other.bin").read_bytes() == data
    assert not list(down.glob("*.petrel-tmp"))

    piped = petrel(home, "cp", "-", f"s3://{bucket}/from-stdin", stdin=b"\x00piped\n")
    assert piped.returncode == 0 and body(s3, bucket, "from-stdin") == b"\x00piped\n"
    out = petrel(home, "cp", f"s3://{bucket}/from-stdin", "-")
    assert out.returncode == 0 and out.stdout == b"\x00piped\n"

    copied = petrel(home, "cp", f"s3://{bucket}/renamed.jpg", f"s3://{bucket}/copies/")
    assert copied.returncode == 0 and body(s3, bucket, "copies/renamed.jpg") == data


def test_cp_recursive(home: Path, tmp_path: Path, s3: Any, bucket: str) -> None:
    tree = {f"d{i % 3}/f{i}.bin": os.urandom(i * 37) for i in range(45)}
    for rel, data in tree.items():
        path = tmp_path / "tree" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    up = petrel(home, "cp", "-r", str(tmp_path / "tree"), f"s3://{bucket}/up",
                "--batch-items", "7")
    assert up.returncode == 0, up.stderr
    assert f"copied 45 objects to s3://{bucket}/up/" in text(up)[0]
    assert {key: body(s3, bucket, key) for key in keys(s3, bucket, "up/")} == \
        {f"up/{rel}": data for rel, data in tree.items()}

    remote = petrel(home, "cp", "-r", f"s3://{bucket}/up", f"s3://{bucket}/again/",
                    "--batch-items", "4", "--batch-bytes", "600")
    assert remote.returncode == 0, remote.stderr
    assert {key: body(s3, bucket, key) for key in keys(s3, bucket, "again/")} == \
        {f"again/{rel}": data for rel, data in tree.items()}

    down = petrel(home, "cp", "-r", f"s3://{bucket}/again/", str(tmp_path / "down"),
                  "--batch-items", "5", "--batch-bytes", "1000")
    assert down.returncode == 0, down.stderr
    assert {str(p.relative_to(tmp_path / "down")): p.read_bytes()
            for p in (tmp_path / "down").rglob("*") if p.is_file()} == tree


def test_cp_refuses_keys_that_leave_the_destination(home: Path, tmp_path: Path, s3: Any,
                                                    bucket: str) -> None:
    put(s3, bucket, {"p/ok.txt": b"ok", "p/../../escaped.txt": b"evil"})
    done = petrel(home, "cp", "-r", f"s3://{bucket}/p", str(tmp_path / "out" / "in"))
    assert done.returncode == 1
    assert "escaped.txt: its key would be written outside the destination" in text(done)[1]
    assert (tmp_path / "out" / "in" / "ok.txt").read_bytes() == b"ok"
    assert not list(tmp_path.rglob("escaped.txt"))


def test_cp_errors(home: Path, tmp_path: Path, bucket: str, s3: Any) -> None:
    put(s3, bucket, {"dir/x": b"x"})
    missing = petrel(home, "cp", f"s3://{bucket}/nope", str(tmp_path))
    assert missing.returncode == 1
    assert text(missing)[1].strip() == f"petrel cp: no such object: s3://{bucket}/nope"
    prefix = petrel(home, "cp", f"s3://{bucket}/dir", str(tmp_path))
    assert prefix.returncode == 1 and "is a prefix, not an object (use -r)" in text(prefix)[1]
    (tmp_path / "folder").mkdir()
    folder = petrel(home, "cp", str(tmp_path / "folder"), f"s3://{bucket}/f")
    assert folder.returncode == 2 and "is a directory (use -r)" in text(folder)[1]
    local = petrel(home, "cp", str(tmp_path / "a"), str(tmp_path / "b"))
    assert local.returncode == 2
    no_file = petrel(home, "cp", str(tmp_path / "absent"), f"s3://{bucket}/f")
    assert no_file.returncode == 1 and "absent" in text(no_file)[1]
    no_bucket = petrel(home, "cp", "-", "s3://no-such-bucket-cp/k", stdin=b"x")
    assert no_bucket.returncode == 1 and "no such bucket: s3://no-such-bucket-cp" in \
        text(no_bucket)[1]


# ----- rm --------------------------------------------------------------------------------
def test_rm_one_object(home: Path, s3: Any, bucket: str) -> None:
    put(s3, bucket, {"a": b"1", "b": b"2"})
    done = petrel(home, "rm", f"s3://{bucket}/a")
    assert done.returncode == 0 and text(done)[0].strip() == f"delete: s3://{bucket}/a"
    assert keys(s3, bucket) == ["b"]
    again = petrel(home, "rm", f"s3://{bucket}/a")
    assert again.returncode == 1 and f"no such object: s3://{bucket}/a" in text(again)[1]


def test_rm_recursive_needs_confirmation(home: Path, s3: Any, bucket: str) -> None:
    objects = {f"dir/{i}": b"x" for i in range(30)}
    put(s3, bucket, {**objects, "dir2/keep": b"k", "dirfile": b"k"})
    refused = petrel(home, "rm", "-r", f"s3://{bucket}/dir")  # stdin is not a terminal
    assert refused.returncode == 2 and "--yes" in text(refused)[1]
    assert len(keys(s3, bucket)) == 32
    done = petrel(home, "rm", "-r", "--yes", f"s3://{bucket}/dir")
    assert done.returncode == 0, done.stderr
    assert f"deleted 30 objects under s3://{bucket}/dir/" in text(done)[0]
    assert keys(s3, bucket) == ["dir2/keep", "dirfile"]  # only what is under dir/
    nothing = petrel(home, "rm", "-r", "-y", f"s3://{bucket}/dir")
    assert nothing.returncode == 1 and "nothing under" in text(nothing)[1]


def run_on_terminal(home: Path, args: list[str], answer: bytes) -> tuple[int, str]:
    """Run with stdin on a pseudo-terminal (so it may ask) and type `answer`."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "petrel", *args], stdin=follower,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, "HOME": str(home)})
        os.write(leader, answer)
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        os.close(follower)
        os.close(leader)
    assert b"Traceback" not in err, err.decode()
    return process.returncode, out.decode() + err.decode()


def test_rm_recursive_asks_on_a_terminal(home: Path, s3: Any, bucket: str) -> None:
    put(s3, bucket, {f"tmp/{i}": b"x" for i in range(3)})
    code, output = run_on_terminal(home, ["rm", "-r", f"s3://{bucket}/tmp/"], b"n\n")
    assert code == 1 and f"delete 3 objects under s3://{bucket}/tmp/? [y/N]" in output
    assert len(keys(s3, bucket)) == 3
    code, output = run_on_terminal(home, ["rm", "-r", f"s3://{bucket}/tmp/"], b"y\n")
    assert code == 0 and "deleted 3 objects" in output
    assert keys(s3, bucket) == []


# ----- mb, rb ----------------------------------------------------------------------------
def test_mb_rb(home: Path, s3: Any) -> None:
    name = "files-mb-" + uuid.uuid4().hex[:8]
    made = petrel(home, "mb", f"s3://{name}")
    assert made.returncode == 0 and text(made)[0].strip() == f"make_bucket: {name}"
    s3.head_bucket(Bucket=name)
    twice = petrel(home, "mb", f"s3://{name}")
    assert twice.returncode == 1 and f"bucket s3://{name} already exists" in text(twice)[1]

    put(s3, name, {f"k{i}": b"v" for i in range(5)})
    full = petrel(home, "rb", f"s3://{name}")
    assert full.returncode == 1 and "is not empty (--force" in text(full)[1]
    s3.head_bucket(Bucket=name)
    forced = petrel(home, "rb", "--force", f"s3://{name}")
    assert forced.returncode == 0, forced.stderr
    assert f"remove_bucket: {name}" in text(forced)[0]
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    gone = petrel(home, "rb", f"s3://{name}")
    assert gone.returncode == 1 and f"no such bucket: s3://{name}" in text(gone)[1]
    with_key = petrel(home, "mb", f"s3://{name}/key")
    assert with_key.returncode == 2
