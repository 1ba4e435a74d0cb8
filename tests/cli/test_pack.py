"""`petrel pack` run as a user runs it (subprocess, real gateway on loopback, a HOME with
a petreloss.conf), checked independently with boto3: every file stored byte for byte
under the documented key, a manifest in petrel/manifest.py's format, and, after an
interruption, each file stored exactly once (counted by the gateway: batch put requests
and dead bytes, which an overwrite would create)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from petrel import manifest
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway

ACCESS_KEY = "PKPACKTESTKEY0000001"
SECRET_KEY = "pack-test-secret-0123456789abcdefghij"
CRASH_ENV = "PETREL_PACK_TEST_CRASH_AFTER_BATCHES"
EXIT_TEST_CRASH = 86
RUN_TIMEOUT_S = 120


def _start(factory: pytest.TempPathFactory, name: str) -> Gateway:
    data_dir = str(factory.mktemp(name) / "data")
    return start_gateway(data_dir, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = _start(tmp_path_factory, "pack-gateway")
    yield running
    assert stop_gateway(running) == 0, running.log()


@pytest.fixture(scope="module")
def clean_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Only for the exactly-once tests: nothing is ever overwritten or deleted in it,
    so any dead byte is a file stored twice."""
    running = _start(tmp_path_factory, "pack-clean-gateway")
    yield running
    assert stop_gateway(running) == 0, running.log()


def make_home(root: Path, gateway: Gateway) -> Path:
    home = root / "home"
    home.mkdir(exist_ok=True)
    (home / "petreloss.conf").write_text(
        "[DEFAULT]\ndefault_cluster = local\n"
        f"[local]\nhost_base = {gateway.endpoint}\naccess_key = {ACCESS_KEY}\n"
        f"secret_key = {SECRET_KEY}\n")
    return home


def petrel(home: Path, *args: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "petrel", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, cwd=cwd,
                          env={**os.environ, "HOME": str(home), **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr
    return done


def s3_client(gateway: Gateway) -> Any:
    return boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


def new_bucket(gateway: Gateway) -> str:
    bucket = "pack-" + uuid.uuid4().hex[:12]
    s3_client(gateway).create_bucket(Bucket=bucket)
    return bucket


def metrics(gateway: Gateway) -> dict[str, float]:
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for name, value in re.findall(r"^(petrel_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M):
        found[name] = float(value)
    return found


def batch_puts(gateway: Gateway) -> float:
    return metrics(gateway).get(
        'petrel_requests_total{operation="batch_put_objects",status="200"}', 0.0)


def make_tree(root: Path, count: int, seed: int = 7) -> dict[str, bytes]:
    """`count` files of 0-3000 random bytes in nested directories; {relative path: data}."""
    rng = random.Random(seed)
    files = {}
    for index in range(count):
        rel = f"d{index % 3}/sub{index % 2}/file-{index:04d}.bin"
        data = rng.randbytes(rng.randint(0, 3000))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = data
    return files


def stored_objects(gateway: Gateway, bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = s3_client(gateway)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [entry["Key"] for entry in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def read_manifest(gateway: Gateway, bucket: str, key: str) -> manifest.Manifest:
    body = s3_client(gateway).get_object(Bucket=bucket, Key=key)["Body"].read()
    return manifest.decode(body)


def check_packed(gateway: Gateway, bucket: str, prefix: str, files: dict[str, bytes],
                 manifest_key: str) -> None:
    """Exactly `files` under prefix, byte for byte, each ETag the MD5; the manifest
    lists exactly them with their sizes."""
    expected = {prefix + rel: data for rel, data in files.items()}
    assert stored_objects(gateway, bucket, prefix) == expected
    s3 = s3_client(gateway)
    for key, data in list(expected.items())[:20]:
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        assert etag == hashlib.md5(data).hexdigest()
    listed = read_manifest(gateway, bucket, manifest_key)
    assert sorted(listed.keys) == sorted(expected)
    assert len(listed.keys) == len(set(listed.keys))
    assert {entry.key: entry.size for entry in listed.entries} == \
        {key: len(data) for key, data in expected.items()}
    assert listed.meta["complete"] is True


# ----- what gets stored ----------------------------------------------------------------
def test_pack_directory(gateway: Gateway, tmp_path: Path) -> None:
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 57)
    bucket = new_bucket(gateway)
    before = batch_puts(gateway)
    done = petrel(home, "pack", str(tmp_path / "src"), f"s3://{bucket}/train",
                  "--batch-items", "10", "--batch-bytes", "20KiB")
    assert done.returncode == 0, done.stderr
    assert "packed 57 files" in done.stdout and "0 failed" in done.stdout
    assert f"manifest: s3://{bucket}/train.manifest.jsonl (57 objects)" in done.stdout
    assert "\r" not in done.stderr  # no progress bar without a terminal
    check_packed(gateway, bucket, "train/", files, "train.manifest.jsonl")
    # Bounded batches: at most 10 items and 20 KiB each (files are at most 3000 bytes).
    sent = batch_puts(gateway) - before
    assert sent >= max(6, sum(len(d) for d in files.values()) // (20 * 1024))
    # The manifest keeps source order: sorted directory by directory.
    keys = read_manifest(gateway, bucket, "train.manifest.jsonl").keys
    assert keys[:2] == ["train/d0/sub0/file-0000.bin", "train/d0/sub0/file-0006.bin"]


def test_pack_tar_file(gateway: Gateway, tmp_path: Path) -> None:
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 12)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    bucket = new_bucket(gateway)
    done = petrel(home, "pack", str(archive), f"s3://{bucket}/from-tar/", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    check_packed(gateway, bucket, "from-tar/", files, "from-tar.manifest.jsonl")


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pack_webdataset_shards(gateway: Gateway, tmp_path: Path) -> None:
    home = make_home(tmp_path, gateway)
    shards = tmp_path / "shards"
    shards.mkdir()
    expected = {}
    for shard in range(3):
        members = {f"{sample:06d}.{ext}": os.urandom(100 + sample)
                   for sample in range(4) for ext in ("jpg", "cls")}
        write_shard(shards / f"shard-{shard:06d}.tar", members)
        expected.update({f"shard-{shard:06d}/{name}": data for name, data in members.items()})
    bucket = new_bucket(gateway)
    # A list of shards ...
    listed = sorted(str(path) for path in shards.iterdir())
    done = petrel(home, "pack", *listed, f"s3://{bucket}/wds", "--manifest", "wds.txt")
    assert done.returncode == 0, done.stderr
    check_packed(gateway, bucket, "wds/", expected, "wds.txt")
    # ... or the directory holding them.
    done = petrel(home, "pack", "--source", "shards", str(shards), f"local:s3://{bucket}/dir")
    assert done.returncode == 0, done.stderr
    check_packed(gateway, bucket, "dir/", expected, "dir.manifest.jsonl")


# ----- resuming ------------------------------------------------------------------------
def test_crash_after_acknowledged_batches_then_resume_stores_each_file_once(
        clean_gateway: Gateway, tmp_path: Path) -> None:
    """The test hook kills pack when the answer of its 3rd batch arrives, before the
    journal records it: the resumed run must find those 5 files on the server, not
    send them again, and send the other 25 in exactly 5 batches."""
    gateway = clean_gateway
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 40)
    bucket = new_bucket(gateway)
    command = ("pack", str(tmp_path / "src"), f"s3://{bucket}/ds", "--batch-items", "5",
               "--jobs", "1")
    before = metrics(gateway)
    crashed = petrel(home, *command, env={CRASH_ENV: "3"})
    assert crashed.returncode == EXIT_TEST_CRASH, crashed.stderr
    assert len(stored_objects(gateway, bucket, "ds/")) == 15
    middle = metrics(gateway)
    assert batch_puts(gateway) - before.get(
        'petrel_requests_total{operation="batch_put_objects",status="200"}', 0) == 3

    resumed = petrel(home, *command)
    assert resumed.returncode == 0, resumed.stderr
    assert "packed 25 files" in resumed.stdout and "15 already stored" in resumed.stdout
    after = metrics(gateway)
    key = 'petrel_requests_total{operation="batch_put_objects",status="200"}'
    assert after[key] - middle[key] == 5
    assert after["petrel_dead_bytes"] == before.get("petrel_dead_bytes", 0) == 0
    assert after["petrel_objects"] - before.get("petrel_objects", 0) == 40 + 1  # + manifest
    check_packed(gateway, bucket, "ds/", files, "ds.manifest.jsonl")

    # Run again: nothing sent, the manifest (unchanged) not rewritten.
    again = petrel(home, *command)
    assert again.returncode == 0 and "40 already stored" in again.stdout
    final = metrics(gateway)
    assert final[key] == after[key]
    assert final["petrel_dead_bytes"] == 0


def test_killed_mid_run_then_resume_stores_each_file_once(
        clean_gateway: Gateway, tmp_path: Path) -> None:
    """SIGKILL at an arbitrary moment with 3 batches in flight; the resumed run stores
    the rest, and nothing twice (no dead bytes: an overwrite would leave some)."""
    gateway = clean_gateway
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 600, seed=11)
    bucket = new_bucket(gateway)
    journal = tmp_path / "journal.jsonl"
    command = ["pack", str(tmp_path / "src"), f"s3://{bucket}/big", "--batch-items", "2",
               "--jobs", "3", "--journal", str(journal)]
    process = subprocess.Popen([sys.executable, "-m", "petrel", *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HOME": str(home)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count('"done"') >= 20:
            break
        time.sleep(0.005)
    assert process.poll() is None, "pack finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    time.sleep(0.5)  # let the gateway finish a batch it had whole before the kill
    partial = len(stored_objects(gateway, bucket, "big/"))
    assert 40 <= partial < 600

    resumed = petrel(home, *command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{partial} already stored" in resumed.stdout
    assert metrics(gateway)["petrel_dead_bytes"] == 0
    check_packed(gateway, bucket, "big/", files, "big.manifest.jsonl")


def test_check_remote_skips_what_is_there_without_a_journal(gateway: Gateway,
                                                            tmp_path: Path) -> None:
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 20)
    bucket = new_bucket(gateway)
    target = f"s3://{bucket}/p"
    assert petrel(home, "pack", str(tmp_path / "src"), target).returncode == 0
    changed = tmp_path / "src" / "d1" / "sub1" / "file-0001.bin"
    changed.write_bytes(b"new content")
    files["d1/sub1/file-0001.bin"] = b"new content"
    before = batch_puts(gateway)
    done = petrel(home, "pack", str(tmp_path / "src"), target, "--restart", "--check-remote")
    assert done.returncode == 0, done.stderr
    assert "packed 1 files" in done.stdout and "19 already stored" in done.stdout
    assert batch_puts(gateway) - before == 1
    check_packed(gateway, bucket, "p/", files, "p.manifest.jsonl")


# ----- failures and usage ----------------------------------------------------------------
def test_failed_files_are_listed_and_exit_1(gateway: Gateway, tmp_path: Path) -> None:
    """A key over the gateway's 1024-byte limit fails; the others are stored, the
    manifest lists only them and says it is incomplete."""
    home = make_home(tmp_path, gateway)
    files = make_tree(tmp_path / "src", 6)
    deep = tmp_path / "src" / ("x" * 200) / ("y" * 200) / ("z" * 200) / ("w" * 200)
    deep.mkdir(parents=True)
    (deep / ("v" * 240)).write_bytes(b"too long a key")
    bucket = new_bucket(gateway)
    done = petrel(home, "pack", str(tmp_path / "src"), f"s3://{bucket}/f")
    assert done.returncode == 1
    assert re.search(rf"failed: s3://{bucket}/f/x{{200}}/.*v{{240}}: ", done.stderr)
    assert "packed 6 files" in done.stdout and "1 failed" in done.stdout
    assert stored_objects(gateway, bucket, "f/") == {"f/" + k: v for k, v in files.items()}
    listed = read_manifest(gateway, bucket, "f.manifest.jsonl")
    assert sorted(listed.keys) == sorted("f/" + k for k in files)
    assert listed.meta["complete"] is False


def test_usage_errors(gateway: Gateway, tmp_path: Path) -> None:
    home = make_home(tmp_path, gateway)
    (tmp_path / "src").mkdir()
    missing = petrel(home, "pack", str(tmp_path / "nope"), "s3://somewhere/p")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    local = petrel(home, "pack", str(tmp_path / "src"), str(tmp_path / "dst"))
    assert local.returncode == 2 and "not an s3:// URL" in local.stderr
    bad = petrel(home, "pack", str(tmp_path / "src"), "s3://b/p", "--batch-items", "5000")
    assert bad.returncode == 2
    nobucket = petrel(home, "pack", str(tmp_path / "src"), "s3://no-such-bucket-here/p")
    assert nobucket.returncode == 1
    assert "no such bucket: s3://no-such-bucket-here" in nobucket.stderr
    assert petrel(home, "pack").returncode == 2  # argparse
