"""Disk faults under a running gateway (issue 9, item 3).

* Disk full while writing: the data directory on a small tmpfs, filled with a ballast
  file. The write that finds the disk full is answered 507 or 503 with an S3 error that
  says so; every acknowledged object stays readable and byte-identical (then and after a
  restart); writes resume once the ballast is removed. Needs root (mount -t tmpfs):
  skipped with the reason otherwise.
* A segment file bit-flipped or truncated underneath the running gateway: the damaged
  object is never served (500 InternalError, an ERROR frame in a batch), the corruption
  is counted in `petrel_corruptions_detected` and logged, and every other object is
  still served.
* An unreadable index at start (a file where the index directory should be, a garbage
  RocksDB CURRENT file): the gateway refuses to start with a message naming the index,
  and never serves an empty store. A missing index beside existing segments is rebuilt
  from them (the index is derived data) or refused, never silently empty.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from relsupport import ACCESS_KEY, SECRET_KEY, client, launch, metric, serves, write_config

from petrel import wire
from petrel.testing.gateway import Gateway, free_port, stop_gateway
from petrel.testing.s3raw import S3Failure, S3Raw

BUCKET = "faults"
# Objects under the 64 KiB pack threshold (packed into segments) and over it (whole).
SIZES = (3000, 20_000, 70_000)


def put_objects(s3: S3Raw, count: int, prefix: str = "o") -> dict[str, bytes]:
    objects = {}
    for i in range(count):
        data = f"{prefix}{i}:".encode() + os.urandom(SIZES[i % 2])  # packed ones
        response = s3.put(BUCKET, f"{prefix}/{i:04d}", data)
        assert response.status == 200, response.body
        objects[f"{prefix}/{i:04d}"] = data
    return objects


def corruptions(gateway: Gateway) -> float:
    return metric(gateway, "petrel_corruptions_detected")


def segment_files(data_dir: str) -> list[str]:
    found = []
    for root, _, names in os.walk(data_dir):
        if os.path.basename(root) in ("index", "tmp"):
            continue
        found += [os.path.join(root, name) for name in names]
    return found


def locate(data_dir: str, payload: bytes, attempts: int = 5) -> tuple[str, int]:
    """The file and offset holding `payload` (a unique byte string). A segment being
    sealed moves from data/segments to data/blobs: a file that vanishes between the
    walk and its reading makes the whole walk start again (bounded)."""
    for _ in range(attempts):
        try:
            for path in segment_files(data_dir):
                with open(path, "rb") as handle:
                    content = handle.read()
                offset = content.find(payload)
                if offset >= 0:
                    return path, offset
        except FileNotFoundError:
            continue
        raise AssertionError("payload not found in any segment file")
    raise AssertionError(f"segment files kept moving during {attempts} walks")


def assert_served(s3: S3Raw, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        response = s3.get(BUCKET, key)
        assert response.status == 200 and response.body == data, (key, response.status)


# ----- bit flips and truncation under a running gateway ------------------------------------
@pytest.fixture
def running(tmp_path: Path) -> Iterator[Gateway]:
    gateway = launch(tmp_path)
    with client(gateway) as s3:
        assert s3.create_bucket(BUCKET).status == 200
    yield gateway
    stop_gateway(gateway)


def _wait_sealed(data_dir: str, timeout_s: float = 15.0) -> None:
    """Until a sealed segment is in the local backend (data/blobs)."""
    deadline = time.monotonic() + timeout_s
    blobs = os.path.join(data_dir, "blobs")
    while time.monotonic() < deadline:
        if any(names for _, _, names in os.walk(blobs)):
            return
        time.sleep(0.2)
    raise AssertionError("no segment was sealed")


def test_bit_flip_detected_counted_logged_and_isolated(running: Gateway) -> None:
    with client(running) as s3:
        # ~700 KiB: the first segments roll (512 KiB) and are sealed; the last is active.
        objects = put_objects(s3, 60)
        _wait_sealed(running.data_dir)
        keys = list(objects)
        victims = [keys[3], keys[-2]]  # one in a sealed segment, one in the active one
        places = {locate(running.data_dir, objects[k][:64])[0] for k in victims}
        assert len(places) == 2, f"expected one sealed and one active segment: {places}"
        before = corruptions(running)
        for key in victims:
            path, offset = locate(running.data_dir, objects[key][:64])
            with open(path, "r+b") as handle:
                handle.seek(offset + len(objects[key]) // 2)
                byte = handle.read(1)
                handle.seek(-1, os.SEEK_CUR)
                handle.write(bytes([byte[0] ^ 0x10]))
        for key in victims:
            response = s3.get(BUCKET, key)
            assert (response.status, response.code) == (500, "InternalError"), \
                (key, response.status, response.body[:200])
            ranged = s3.get(BUCKET, key, headers={"Range": "bytes=0-9"})
            assert ranged.status == 500, (key, ranged.status)
        status, frames = s3.batch_get(BUCKET, [victims[0], keys[0], victims[1]])
        assert status == 200
        assert [f.status for f in frames] == [wire.Status.ERROR, wire.Status.OK,
                                             wire.Status.ERROR]
        assert bytes(frames[1].data) == objects[keys[0]]
        assert_served(s3, {k: v for k, v in objects.items() if k not in victims})
    assert corruptions(running) >= before + 2
    log = running.log()
    for key in victims:
        assert f"{BUCKET}/{key}" in log and "corrupt" in log.lower(), log[-3000:]
    assert serves(running)


def _truncate_into(path: str, offset: int, payload_bytes: int) -> None:
    os.truncate(path, offset + payload_bytes // 2)


def test_truncated_active_segment(running: Gateway) -> None:
    with client(running) as s3:
        objects = put_objects(s3, 12)
        last = list(objects)[-1]
        path, offset = locate(running.data_dir, objects[last][:64])
        assert os.path.dirname(path).endswith("segments"), path  # the active segment
        before = corruptions(running)
        _truncate_into(path, offset, len(objects[last]))
        response = s3.get(BUCKET, last)
        assert (response.status, response.code) == (500, "InternalError"), \
            (response.status, response.body[:300])
        assert_served(s3, {k: v for k, v in objects.items() if k != last})
    assert corruptions(running) >= before + 1
    assert serves(running)


def test_truncated_sealed_segment(running: Gateway) -> None:
    with client(running) as s3:
        objects = put_objects(s3, 60)
        _wait_sealed(running.data_dir)
        sealed = [(k, locate(running.data_dir, v[:64])) for k, v in objects.items()]
        sealed = [(k, p) for k, p in sealed if "blobs" in p[0]]
        assert sealed, "no object in a sealed segment"
        path = sealed[0][1][0]
        in_file = [(k, offset) for k, (p, offset) in sealed if p == path]
        victim, offset = in_file[len(in_file) // 2]
        before = corruptions(running)
        _truncate_into(path, offset, len(objects[victim]))
        response = s3.get(BUCKET, victim)
        # A record cut short by the disk is a corruption (500), not a client error.
        assert (response.status, response.code) == (500, "InternalError"), \
            (response.status, response.body[:300])
        gone = {k for k, o in in_file if o >= offset}
        assert_served(s3, {k: v for k, v in objects.items() if k not in gone})
    assert corruptions(running) >= before + 1
    assert serves(running)


# ----- the index cannot be opened at start -------------------------------------------------
@dataclass
class StartAttempt:
    exit_code: int | None  # None: still running after the timeout (it served)
    output: str
    served: bool = False
    objects: list[str] = field(default_factory=list)


def attempt_start(directory: Path, timeout_s: float = 30.0) -> StartAttempt:
    """Start a gateway on `directory/data` and report whether it exits or serves."""
    port = free_port()
    command = [sys.executable, "-m", "petrel", "serve", "--data", str(directory / "data"),
               "--host", "127.0.0.1", "--port", str(port), "--config",
               str(directory / "petrel.toml"), "--access-key", ACCESS_KEY,
               "--secret-key", SECRET_KEY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return StartAttempt(process.returncode, output.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pass
    try:
        with S3Raw(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY) as s3:
            served = s3.request("GET", "/").status == 200
            listed = s3.list_all(BUCKET) if served else []
    except (S3Failure, RuntimeError):
        served, listed = False, []
    process.terminate()
    output, _ = process.communicate(timeout=30)
    return StartAttempt(None, output.decode(errors="replace"), served, listed)


@pytest.fixture
def stopped_store(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A data directory with objects in sealed and active segments, gateway stopped."""
    gateway = launch(tmp_path)
    with client(gateway) as s3:
        assert s3.create_bucket(BUCKET).status == 200
        objects = put_objects(s3, 60)
    assert stop_gateway(gateway) == 0
    return tmp_path, objects


def _assert_refused(attempt: StartAttempt) -> None:
    assert attempt.exit_code is not None and attempt.exit_code != 0, \
        f"the gateway started (served={attempt.served}, {len(attempt.objects)} objects " \
        f"listed) instead of refusing:\n{attempt.output[-2000:]}"
    assert "index" in attempt.output.lower(), attempt.output[-2000:]


def _assert_clear(attempt: StartAttempt) -> None:
    """A clear message: one line that names the problem, not a Python traceback."""
    assert "Traceback" not in attempt.output, attempt.output[-3000:]


def test_index_path_is_a_file(stopped_store: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = stopped_store
    index = directory / "data" / "index"
    shutil.rmtree(index)
    index.write_bytes(b"not a directory\n")
    attempt = attempt_start(directory)
    _assert_refused(attempt)


def test_index_current_file_garbage(stopped_store: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = stopped_store
    (directory / "data" / "index" / "CURRENT").write_bytes(b"\x00\xffgarbage\n")
    attempt = attempt_start(directory)
    _assert_refused(attempt)


def test_unopenable_index_message_is_clear(
        stopped_store: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = stopped_store
    (directory / "data" / "index" / "CURRENT").write_bytes(b"\x00\xffgarbage\n")
    attempt = attempt_start(directory)
    _assert_refused(attempt)
    _assert_clear(attempt)


def test_missing_index_is_rebuilt_never_empty(
        stopped_store: tuple[Path, dict[str, bytes]]) -> None:
    directory, objects = stopped_store
    shutil.rmtree(directory / "data" / "index")
    attempt = attempt_start(directory, timeout_s=8.0)
    if attempt.exit_code is not None:  # refused: acceptable, if it says why
        assert attempt.exit_code != 0 and "index" in attempt.output.lower(), attempt.output
        return
    assert attempt.served, attempt.output[-2000:]
    assert sorted(attempt.objects) == sorted(objects), \
        f"started with {len(attempt.objects)} of {len(objects)} objects"


# ----- disk full ---------------------------------------------------------------------------
FS_BYTES = 48 * 1024 * 1024
FREE_AFTER_BALLAST_BYTES = 3 * 1024 * 1024


@dataclass
class DiskFullRun:
    acked: dict[str, bytes] = field(default_factory=dict)
    first_error: tuple[int, str | None, bytes] | None = None
    later_errors: list[tuple[int, str | None]] = field(default_factory=list)
    read_failures_while_full: list[tuple[str, int, str | None]] = field(default_factory=list)
    resumed_after_s: float | None = None
    restart_failures: list[tuple[str, int, str | None]] = field(default_factory=list)
    log: str = ""


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def _mount_small_fs(path: Path, kind: str) -> None:
    """A size-limited filesystem at `path`: an ext4 image on a loop device (the disk a
    gateway really runs on), or a tmpfs. Skips, with the reason, without root or when
    the machine does not allow mounting."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited filesystem")
    path.mkdir()
    if kind == "tmpfs":
        result = _run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(path)])
    else:
        image = path.with_suffix(".img")
        with open(image, "wb") as handle:
            handle.truncate(FS_BYTES)
        made = _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image here: {made.stderr.strip()}")
        result = _run(["mount", "-o", "loop", str(image), str(path)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {kind} filesystem here: {result.stderr.strip()}")


def _fill(directory: Path, leave_bytes: int) -> Path:
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    ballast = directory / "ballast"
    with open(ballast, "wb") as handle:
        remaining = max(0, free - leave_bytes)
        block = b"\0" * (1024 * 1024)
        while remaining > 0:
            handle.write(block[: min(remaining, len(block))])
            remaining -= len(block)
    return ballast


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiskFullRun]:
    mount = tmp_path_factory.mktemp("diskfull") / "fs"
    _mount_small_fs(mount, "ext4")
    run = DiskFullRun()
    try:
        config = write_config(mount)
        gateway = launch(mount, config=config)
        filled = False
        try:
            _fill_and_observe(gateway, mount, run)
            filled = True
        finally:
            stop_gateway(gateway, timeout_s=40)
            run.log = gateway.log()
            if not filled:
                # Shown with the setup error: what the gateway saw when a request
                # failed without an answer (seen once in CI: a reset connection).
                print(f"gateway log (tail):\n{run.log[-8000:]}", file=sys.stderr)
        restarted = launch(mount, config=config)
        try:
            with client(restarted) as s3:
                run.restart_failures = _read_failures(s3, run.acked)
        finally:
            stop_gateway(restarted)
        yield run
    finally:
        _run(["umount", "-l", str(mount)])


def _read_failures(s3: S3Raw, objects: dict[str, bytes]) -> list[tuple[str, int, str | None]]:
    failures = []
    for key, data in objects.items():
        response = s3.get(BUCKET, key)
        if response.status != 200 or response.body != data:
            failures.append((key, response.status, response.code))
    return failures


def _fill_and_observe(gateway: Gateway, mount: Path, run: DiskFullRun) -> None:
    with client(gateway) as s3:
        assert s3.create_bucket(BUCKET).status == 200
        ballast = _fill(mount, FREE_AFTER_BALLAST_BYTES)
        for i in range(400):  # 400 x 20 KB = 8 MB: well past the space left
            key, data = f"full/{i:04d}", f"{i}:".encode() + os.urandom(20_000)
            response = s3.put(BUCKET, key, data)
            if response.status == 200:
                run.acked[key] = data
                continue
            run.first_error = (response.status, response.code, response.body)
            break
        assert run.first_error is not None, "the disk never filled"
        for i in range(3):  # the disk is still full
            response = s3.put(BUCKET, f"still-full/{i}", b"x" * 1000)
            run.later_errors.append((response.status, response.code))
        run.read_failures_while_full = _read_failures(s3, run.acked)
        ballast.unlink()
        started = time.monotonic()
        while time.monotonic() - started < 10.0:
            response = s3.put(BUCKET, "resumed", b"space is back")
            if response.status == 200:
                run.resumed_after_s = time.monotonic() - started
                run.acked["resumed"] = b"space is back"
                break
            time.sleep(0.5)


def test_disk_full_keeps_every_acknowledged_write(disk_full: DiskFullRun) -> None:
    assert len(disk_full.acked) >= 10, "the disk filled before any write"
    assert disk_full.read_failures_while_full == []
    assert disk_full.restart_failures == []


def test_disk_full_answer_is_503_or_507_with_clear_error(disk_full: DiskFullRun) -> None:
    assert disk_full.first_error is not None
    status, code, body = disk_full.first_error
    assert status in (503, 507), (status, code, body[:500])
    assert code is not None and code != "InternalError", body[:500]
    assert re.search(rb"(?i)space|full", body), body[:500]
    for later_status, _ in disk_full.later_errors:
        assert later_status in (503, 507)


def test_disk_full_writes_resume_when_space_returns(disk_full: DiskFullRun) -> None:
    assert disk_full.resumed_after_s is not None, \
        f"writes still refused 10 s after space returned: {disk_full.later_errors}"


def test_sealed_segments_readable_on_tmpfs(tmp_path: Path) -> None:
    """A data directory on tmpfs (a RAM scratch volume, Kubernetes emptyDir medium
    Memory): objects in sealed segments must be served like any other."""
    mount = tmp_path / "fs"
    _mount_small_fs(mount, "tmpfs")
    try:
        gateway = launch(mount, config=write_config(mount))
        try:
            with client(gateway) as s3:
                assert s3.create_bucket(BUCKET).status == 200
                objects = put_objects(s3, 60)
                _wait_sealed(gateway.data_dir)
                failures = _read_failures(s3, objects)
        finally:
            stop_gateway(gateway)
        assert failures == [], f"{len(failures)} of {len(objects)} reads failed: {failures[:3]}"
    finally:
        _run(["umount", "-l", str(mount)])
