"""The real aws cli (`aws s3`, `aws s3api`) as a subprocess against the gateway: bucket
create/remove, cp up and down (a file over the CLI's 8 MiB multipart threshold too),
recursive ls, sync both ways, rm --recursive and the s3api object operations.

awscli comes from the `test` extra in pyproject.toml, so it sits next to sys.executable;
a missing binary fails (never skips) with how to install it.
"""

from __future__ import annotations

import hashlib
import json
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
AWS = Path(sys.executable).with_name("aws")

Aws = Callable[..., subprocess.CompletedProcess[str]]


def _data(seed: str, size_bytes: int) -> bytes:
    return random.Random(seed).randbytes(size_bytes)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root by its '/'-separated relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def aws(gateway, tmp_path) -> Aws:  # type: ignore[no-untyped-def]
    """Runs `aws --endpoint-url <gateway> ARGS...`; fails the test on a non-zero exit
    unless check=False. HOME and the config files point into tmp_path so no user
    configuration or credential leaks in."""
    if not AWS.exists():
        pytest.fail(f"{AWS} is missing: install the test extra (pip install -e '.[test]')")
    home = tmp_path / "aws-home"
    home.mkdir()
    config = home / "config"
    # Path-style addressing: the gateway has no virtual-host buckets.
    config.write_text("[default]\ns3 =\n    addressing_style = path\n", encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1", "AWS_PAGER": "",
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(AWS), "--endpoint-url", gateway.endpoint, *args],
                                env=env, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"aws {' '.join(args)} exited {result.returncode}\n"
                        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    return run


@pytest.fixture
def bucket_name(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A unique name the test creates with the CLI; removed afterwards if it survived."""
    name = "aws-" + uuid.uuid4().hex[:20]
    yield name
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        return
    delete_bucket_fully(s3, name)


def test_mb_cp_ls_rm_rb(aws, bucket_name, tmp_path, s3) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket_name}"
    assert f"make_bucket: {bucket_name}" in aws("s3", "mb", url).stdout
    small = tmp_path / "up" / "docs" / "small.txt"
    small.parent.mkdir(parents=True)
    small.write_bytes(_data("small", 1000))
    # Over the CLI's 8 MiB multipart_threshold, in 8 MiB parts: three parts.
    big = tmp_path / "up" / "data" / "big.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(_data("big", 17 * MiB + 123))
    aws("s3", "cp", "--no-progress", str(small), f"{url}/docs/small.txt")
    aws("s3", "cp", "--no-progress", str(big), f"{url}/data/big.bin")
    head = s3.head_object(Bucket=bucket_name, Key="data/big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].endswith('-3"'), "the CLI did not upload in parts"

    top = aws("s3", "ls", f"{url}/").stdout.splitlines()
    assert sorted(line.split() for line in top) == [["PRE", "data/"], ["PRE", "docs/"]]
    listed = aws("s3", "ls", "--recursive", url).stdout.splitlines()
    assert {line.split()[-1]: int(line.split()[2]) for line in listed} == {
        "data/big.bin": big.stat().st_size, "docs/small.txt": small.stat().st_size}
    assert aws("s3", "ls", f"{url}/nothing-here", check=False).returncode == 1

    # Down again: the big one in ranged GETs, the CLI's multipart download.
    down = tmp_path / "down"
    aws("s3", "cp", "--no-progress", "--recursive", url, str(down))
    assert _tree(down) == _tree(tmp_path / "up")
    missing = aws("s3", "cp", f"{url}/no/such/key", str(down / "x"), check=False)
    assert missing.returncode != 0 and not (down / "x").exists()

    not_empty = aws("s3", "rb", url, check=False)
    assert not_empty.returncode != 0 and "BucketNotEmpty" in not_empty.stderr
    aws("s3", "rm", f"{url}/docs/small.txt")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_name)["Contents"]] == \
        ["data/big.bin"]
    s3.put_object(Bucket=bucket_name, Key="docs/again.txt", Body=b"again")
    removed = aws("s3", "rm", "--recursive", url).stdout
    assert sorted(removed.split()) == sorted(
        ["delete:", f"{url}/data/big.bin", "delete:", f"{url}/docs/again.txt"])
    assert s3.list_objects_v2(Bucket=bucket_name)["KeyCount"] == 0
    assert f"remove_bucket: {bucket_name}" in aws("s3", "rb", url).stdout
    assert bucket_name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_sync_both_ways(aws, bucket_name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://{bucket_name}"
    aws("s3", "mb", url)
    source = tmp_path / "source"
    files = {f"dir{d}/sub/file{i}.bin": _data(f"sync{d}{i}", 100 + 997 * i)
             for d in range(3) for i in range(4)}
    files["top.txt"] = b"top level\n"
    files["with space & plus+.txt"] = b"awkward name\n"
    _write_tree(source, files)

    def sync(*args: str) -> list[str]:
        """What the sync did, one word per file: upload, download or delete."""
        out = aws("s3", "sync", "--no-progress", *args).stdout
        return sorted(line.split(":")[0] for line in out.splitlines())

    assert sync(str(source), f"{url}/tree") == ["upload"] * len(files)
    assert sync(str(source), f"{url}/tree") == [], "a second sync must copy nothing"
    target = tmp_path / "target"
    assert sync(f"{url}/tree", str(target)) == ["download"] * len(files)
    assert _tree(target) == files
    assert sync(f"{url}/tree", str(target)) == []

    # A change of size and a removal are carried over; --delete removes the remote copy.
    (source / "top.txt").write_bytes(b"top level, longer now\n")
    (source / "dir0/sub/file0.bin").unlink()
    assert sync("--delete", str(source), f"{url}/tree") == ["delete", "upload"]
    assert sync("--delete", f"{url}/tree", str(target)) == ["delete", "download"]
    assert _tree(target) == _tree(source)
    aws("s3", "rb", "--force", url)


def test_s3api_object_operations(aws, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    body = tmp_path / "body.bin"
    body.write_bytes(_data("s3api", 3000))
    etag = f'"{hashlib.md5(body.read_bytes()).hexdigest()}"'

    def api(*args: str) -> dict:  # type: ignore[type-arg]
        out = aws("s3api", *args, "--bucket", bucket, "--output", "json").stdout
        return json.loads(out) if out.strip() else {}

    put = api("put-object", "--key", "a/one.bin", "--body", str(body),
              "--content-type", "application/x-test", "--metadata", "origin=awscli")
    assert put["ETag"] == etag
    for key in ("a/two.bin", "b/three.bin"):
        api("put-object", "--key", key, "--body", str(body))

    head = api("head-object", "--key", "a/one.bin")
    assert (head["ContentLength"], head["ETag"]) == (3000, etag)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"origin": "awscli"}
    missing = aws("s3api", "head-object", "--bucket", bucket, "--key", "nope", check=False)
    assert missing.returncode != 0 and "404" in missing.stderr

    # No ACLs in petrel: a fixed owner-only answer, and a PutObjectAcl refused (it once
    # fell through to PutObject and replaced the object with the empty ACL body).
    grants = api("get-object-acl", "--key", "a/one.bin")["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    refused = aws("s3api", "put-object-acl", "--bucket", bucket, "--key", "a/one.bin",
                  "--acl", "private", check=False)
    assert refused.returncode != 0 and "NotImplemented" in refused.stderr

    got = tmp_path / "got.bin"
    api("get-object", "--key", "a/one.bin", str(got))
    assert got.read_bytes() == body.read_bytes()

    # One key per page: the CLI follows the continuation token by itself.
    listed = api("list-objects-v2", "--prefix", "a/", "--page-size", "1")
    assert [o["Key"] for o in listed["Contents"]] == ["a/one.bin", "a/two.bin"]
    assert all((o["Size"], o["ETag"]) == (3000, etag) for o in listed["Contents"])
    grouped = api("list-objects-v2", "--delimiter", "/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "b/"]

    delete = {"Objects": [{"Key": "a/one.bin"}, {"Key": "b/three.bin"},
                          {"Key": "never-existed"}]}
    deleted = api("delete-objects", "--delete", json.dumps(delete))
    assert sorted(d["Key"] for d in deleted["Deleted"]) == \
        ["a/one.bin", "b/three.bin", "never-existed"]
    assert "Errors" not in deleted
    assert [o["Key"] for o in api("list-objects-v2")["Contents"]] == ["a/two.bin"]
