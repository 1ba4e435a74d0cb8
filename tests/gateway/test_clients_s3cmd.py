"""The real s3cmd as a subprocess against the gateway: mb, put (single and multipart,
with s3cmd's own MD5-against-ETag check), get (its MD5 check again), ls, la, info, del,
sync both ways, rb.

s3cmd comes from the `test` extra in pyproject.toml, so it sits next to sys.executable;
a missing binary fails (never skips) with how to install it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully

MiB = 1024 * 1024
COMMAND_TIMEOUT_S = 60
S3CMD = Path(sys.executable).with_name("s3cmd")
# What s3cmd prints (as a WARNING, exit code unchanged on download) when the MD5 it
# computed differs from the ETag or the md5 it stored in x-amz-meta-s3cmd-attrs.
MD5_WARNINGS = ("MD5 Sums don't match", "MD5 signatures do not match")

S3cmd = Callable[..., subprocess.CompletedProcess[str]]


def _data(seed: str, size_bytes: int) -> bytes:
    return random.Random(seed).randbytes(size_bytes)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root by its '/'-separated relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def s3cmd(gateway, tmp_path) -> S3cmd:  # type: ignore[no-untyped-def]
    """Runs `s3cmd -c <generated .s3cfg> ARGS...`; fails the test on a non-zero exit
    unless check=False, and on any MD5 warning."""
    if not S3CMD.exists():
        pytest.fail(f"{S3CMD} is missing: install the test extra (pip install -e '.[test]')")
    home = tmp_path / "s3cmd-home"
    home.mkdir()
    config = home / ".s3cfg"
    host = f"127.0.0.1:{gateway.port}"
    # host_bucket without %(bucket)s: path-style requests, the bucket in the path.
    config.write_text("\n".join([
        "[default]", f"access_key = {ACCESS_KEY}", f"secret_key = {SECRET_KEY}",
        f"host_base = {host}", f"host_bucket = {host}", "use_https = False",
        "signature_v2 = False", "bucket_location = us-east-1", "progress_meter = False",
        "multipart_chunk_size_mb = 5", "socket_timeout = 30", "max_retries = 1", "",
    ]), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(S3CMD), "-c", str(config), *args], env=env,
                                capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
        report = (f"s3cmd {' '.join(args)} exited {result.returncode}\n"
                  f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        if check and result.returncode != 0:
            pytest.fail(report)
        if any(warning in result.stderr for warning in MD5_WARNINGS):
            pytest.fail("MD5 check failed: " + report)
        return result

    return run


@pytest.fixture
def bucket_name(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A unique name the test creates with s3cmd; removed afterwards if it survived."""
    name = "s3cmd-" + uuid.uuid4().hex[:20]
    yield name
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        return
    delete_bucket_fully(s3, name)


def test_mb_put_get_ls_del_rb(s3cmd, bucket_name, tmp_path, s3) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket_name}"
    assert f"Bucket '{url}/' created" in s3cmd("mb", url).stdout
    small = tmp_path / "small.txt"
    small.write_bytes(_data("small", 1234))
    # Over multipart_chunk_size_mb (5): three parts, and s3cmd keeps the whole file's
    # md5 in x-amz-meta-s3cmd-attrs for its checks on get and sync.
    big = tmp_path / "big.bin"
    big.write_bytes(_data("big", 12 * MiB + 7))
    s3cmd("put", str(small), f"{url}/docs/small.txt")
    s3cmd("put", str(big), f"{url}/data/big.bin")
    assert s3.head_object(Bucket=bucket_name, Key="data/big.bin")["ETag"].endswith('-3"')

    assert url in s3cmd("ls").stdout
    top = s3cmd("ls", url).stdout.split()
    assert top == ["DIR", f"{url}/data/", "DIR", f"{url}/docs/"]
    listed = [line.split() for line in s3cmd("ls", "--recursive", url).stdout.splitlines()]
    assert {(words[-1], int(words[2])) for words in listed} == {
        (f"{url}/data/big.bin", big.stat().st_size),
        (f"{url}/docs/small.txt", small.stat().st_size)}
    assert f"{url}/docs/" in s3cmd("la").stdout.split()
    info = s3cmd("info", f"{url}/docs/small.txt").stdout
    assert "File size: 1234" in info and "FULL_CONTROL" in info

    for name in ("small.txt", "big.bin"):
        prefix = "docs" if name == "small.txt" else "data"
        got = tmp_path / f"got-{name}"
        s3cmd("get", f"{url}/{prefix}/{name}", str(got))
        assert got.read_bytes() == (tmp_path / name).read_bytes()
    missing = s3cmd("get", f"{url}/no/such/key", str(tmp_path / "x"), check=False)
    assert missing.returncode != 0 and not (tmp_path / "x").exists()

    assert s3cmd("rb", url, check=False).returncode != 0, "rb of a non-empty bucket"
    assert f"delete: '{url}/docs/small.txt'" in s3cmd("del", f"{url}/docs/small.txt").stdout
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_name)["Contents"]] == \
        ["data/big.bin"]
    s3cmd("del", "--recursive", "--force", url)
    assert s3.list_objects_v2(Bucket=bucket_name)["KeyCount"] == 0
    assert f"Bucket '{url}/' removed" in s3cmd("rb", url).stdout
    assert bucket_name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_sync_both_ways(s3cmd, bucket_name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket_name}"
    s3cmd("mb", url)
    source = tmp_path / "source"
    files = {f"dir{d}/file{i}.bin": _data(f"s3cmd{d}{i}", 50 + 1009 * i)
             for d in range(3) for i in range(3)}
    files["big.bin"] = _data("s3cmd-big", 6 * MiB)  # multipart: compared by stored md5
    files["name with space.txt"] = b"spaces\n"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)

    def sync(*args: str) -> list[str]:
        """What the sync did, one word per file: upload, download or delete."""
        out = s3cmd("sync", "--no-progress", *args).stdout
        return sorted(line.split(":")[0] for line in out.splitlines()
                      if line.startswith(("upload:", "download:", "delete:")))

    assert sync(f"{source}/", f"{url}/tree/") == ["upload"] * len(files)
    assert sync(f"{source}/", f"{url}/tree/") == [], "a second sync must copy nothing"
    target = tmp_path / "target"
    target.mkdir()
    assert sync(f"{url}/tree/", f"{target}/") == ["download"] * len(files)
    assert _tree(target) == files
    assert sync(f"{url}/tree/", f"{target}/") == []

    # Same size, new content: s3cmd compares md5 as well as size.
    (source / "dir1/file1.bin").write_bytes(_data("changed", len(files["dir1/file1.bin"])))
    (source / "dir2/file0.bin").unlink()
    assert sync("--delete-removed", f"{source}/", f"{url}/tree/") == ["delete", "upload"]
    assert sync("--delete-removed", f"{url}/tree/", f"{target}/") == ["delete", "download"]
    assert _tree(target) == _tree(source)
    s3cmd("del", "--recursive", "--force", url)
    s3cmd("rb", url)
