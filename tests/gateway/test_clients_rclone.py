"""The real rclone as a subprocess against the gateway: mkdir, copy (single and multipart
uploads), lsf, check (md5 of every file against the ETag or, for multipart objects, the
md5 rclone keeps in metadata), sync both ways, delete, purge.

rclone is not on PyPI: `make test` installs the Debian package first
(deploy/scripts/install-test-tools.sh). Where it is still missing the tests skip, except
under CI=true, where a missing rclone fails them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully

MiB = 1024 * 1024
COMMAND_TIMEOUT_S = 60
REMOTE = "petrel"

Rclone = Callable[..., subprocess.CompletedProcess[str]]


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


def _rclone_binary() -> str:
    found = shutil.which("rclone")
    if found is not None:
        return found
    reason = ("rclone is not on PATH: `make test` installs it (apt-get install rclone, "
              "deploy/scripts/install-test-tools.sh); install it by hand elsewhere")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason + " (CI=true: a missing client is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture
def rclone(gateway, tmp_path) -> Rclone:  # type: ignore[no-untyped-def]
    """Runs `rclone --config <generated file> ARGS...` with remote `petrel:` pointing at
    the gateway; fails the test on a non-zero exit unless check=False."""
    binary = _rclone_binary()
    config = tmp_path / "rclone.conf"
    # upload_cutoff/chunk_size of 5 MiB (rclone's smallest chunk) so a 12 MiB file goes
    # up in parts; rclone then stores the whole file's md5 as X-Amz-Meta-Md5chksum.
    config.write_text("\n".join([
        f"[{REMOTE}]", "type = s3", "provider = Other", "env_auth = false",
        f"access_key_id = {ACCESS_KEY}", f"secret_access_key = {SECRET_KEY}",
        "region = us-east-1", f"endpoint = {gateway.endpoint}", "force_path_style = true",
        "upload_cutoff = 5M", "chunk_size = 5M", "",
    ]), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "RCLONE_CONFIG": str(config)}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [binary, "--config", str(config), "--retries", "1",
                   "--low-level-retries", "1", "--contimeout", "10s", "--timeout", "30s",
                   *args]
        result = subprocess.run(command, env=env, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"rclone {' '.join(args)} exited {result.returncode}\n"
                        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    return run


@pytest.fixture
def bucket_name(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A unique name the test creates with rclone; removed afterwards if it survived."""
    name = "rclone-" + uuid.uuid4().hex[:20]
    yield name
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        return
    delete_bucket_fully(s3, name)


def _copied(result: subprocess.CompletedProcess[str]) -> int:
    """How many files a copy/sync run with -v transferred (one INFO line each)."""
    return sum(": Copied (" in line for line in result.stderr.splitlines())


def test_copy_check_lsf_delete_purge(rclone, bucket_name, tmp_path, s3) -> None:  # type: ignore[no-untyped-def]
    remote = f"{REMOTE}:{bucket_name}"
    rclone("mkdir", remote)
    assert f"{bucket_name}/" in rclone("lsf", f"{REMOTE}:").stdout.split()
    source = tmp_path / "source"
    files = {f"d{d}/f{i}.bin": _data(f"rc{d}{i}", 10 + 3001 * i)
             for d in range(2) for i in range(3)}
    files["big.bin"] = _data("rclone-big", 12 * MiB)
    files["notes.txt"] = b"plain text\n"
    _write_tree(source, files)

    assert _copied(rclone("copy", "-v", str(source), remote)) == len(files)
    big = s3.head_object(Bucket=bucket_name, Key="big.bin")
    assert big["ETag"].endswith('-3"')
    # What `rclone check` compares for a multipart object (its ETag is no md5).
    assert big["Metadata"]["md5chksum"] == \
        base64.b64encode(hashlib.md5(files["big.bin"]).digest()).decode()
    assert _copied(rclone("copy", "-v", str(source), remote)) == 0

    assert sorted(rclone("lsf", "-R", "--files-only", remote).stdout.split()) == \
        sorted(files)
    assert rclone("lsf", remote).stdout.split() == ["big.bin", "d0/", "d1/", "notes.txt"]
    sizes = rclone("lsf", "-R", "--files-only", "--format", "ps", "--separator", "|",
                   remote).stdout.splitlines()
    assert dict(line.split("|") for line in sizes) == {
        name: str(len(data)) for name, data in files.items()}
    # --download compares the bytes themselves as well as the stored hashes.
    rclone("check", str(source), remote)
    rclone("check", "--download", str(source), remote)

    # Same size, new bytes: check must tell (exit 1), by md5.
    s3.put_object(Bucket=bucket_name, Key="d0/f1.bin", Body=_data("other", 3011))
    differ = rclone("check", str(source), remote, check=False)
    assert differ.returncode == 1 and "d0/f1.bin" in differ.stderr

    down = tmp_path / "down"
    rclone("copy", f"{remote}/d1", str(down / "d1"))
    rclone("copy", f"{remote}/big.bin", str(down))
    assert _tree(down) == {k: v for k, v in files.items() if k.startswith("d1/")} | {
        "big.bin": files["big.bin"]}

    rclone("delete", "--include", "*.txt", remote)
    assert "notes.txt" not in rclone("lsf", remote).stdout.split()
    rclone("purge", remote)
    assert bucket_name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert rclone("lsf", remote, check=False).returncode != 0


def test_sync_both_ways(rclone, bucket_name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    remote = f"{REMOTE}:{bucket_name}/tree"
    source = tmp_path / "source"
    files = {f"a/b{d}/file{i}.bin": _data(f"rsync{d}{i}", 100 + 2003 * i)
             for d in range(3) for i in range(4)}
    files["name with space & plus+.txt"] = b"awkward name\n"
    _write_tree(source, files)

    assert _copied(rclone("sync", "-v", str(source), remote)) == len(files)
    assert _copied(rclone("sync", "-v", str(source), remote)) == 0, \
        "a second sync must copy nothing"
    target = tmp_path / "target"
    assert _copied(rclone("sync", "-v", remote, str(target))) == len(files)
    assert _tree(target) == files
    assert _copied(rclone("sync", "-v", remote, str(target))) == 0

    # Same size, new bytes, and a removal: both carried over, both ways.
    (source / "a/b1/file2.bin").write_bytes(_data("changed", len(files["a/b1/file2.bin"])))
    (source / "a/b0/file0.bin").unlink()
    assert _copied(rclone("sync", "-v", str(source), remote)) == 1
    rclone("check", str(source), remote)
    assert _copied(rclone("sync", "-v", remote, str(target))) == 1
    assert _tree(target) == _tree(source)
    rclone("purge", f"{REMOTE}:{bucket_name}")
