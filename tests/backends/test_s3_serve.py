"""`petrel serve --backend s3://...` with SeaweedFS behind it, driven by boto3 as users
drive it; `petrel fsck --rebuild-index` with the same backend options on a lost disk;
and a backend outage seen through HTTP: 503 for remote-only reads, with a clear log."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from weed import ACCESS_KEY, BUCKET, SECRET_KEY, s3_client, start_weed

from petrel.testing.gateway import Gateway, start_gateway, stop_gateway
from petrel.testing.seaweedfs import SeaweedFS

GATEWAY_ACCESS_KEY = "gateway-access"
GATEWAY_SECRET_KEY = "gateway-secret-0123456789"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 60.0
# Small segments and a short idle seal, so uploads happen within a test.
CONFIG = """\
[store]
segment_bytes_max = 262144
pack_threshold_bytes = 16384
seal_idle_s = 0.5
upload_retry_delay_s_max = 0.5
close_upload_timeout_s = 2.0

[backend]
region = "us-east-1"
"""


def client_of(gateway: Gateway) -> Any:
    # No retries: a 503 must reach the test, not be retried away by boto3.
    return boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                        aws_access_key_id=GATEWAY_ACCESS_KEY,
                        aws_secret_access_key=GATEWAY_SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


def backend_args(weed: SeaweedFS, prefix: str) -> list[str]:
    return ["--backend", f"s3://{BUCKET}/{prefix}", "--backend-endpoint", weed.endpoint,
            "--backend-path-style"]


def backend_env() -> dict[str, str]:
    return {"PETREL_BACKEND_ACCESS_KEY": ACCESS_KEY, "PETREL_BACKEND_SECRET_KEY": SECRET_KEY}


def start(tmp_path: Path, data_dir: Path, weed: SeaweedFS, prefix: str) -> Gateway:
    """`petrel serve` on `data_dir` with `weed` as its backend under `prefix`."""
    config = tmp_path / "petrel.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return start_gateway(str(data_dir), "--config", str(config),
                         "--access-key", GATEWAY_ACCESS_KEY,
                         "--secret-key", GATEWAY_SECRET_KEY, *backend_args(weed, prefix),
                         env=backend_env(), timeout_s=START_TIMEOUT_S)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """Gateways a test starts; each is stopped by PID at the end, whatever happens."""
    started: list[Gateway] = []
    yield started
    for gateway in started:
        stop_gateway(gateway, STOP_TIMEOUT_S)


def fsck_rebuild(data_dir: Path, weed: SeaweedFS, prefix: str
                 ) -> subprocess.CompletedProcess[str]:
    """`petrel fsck --rebuild-index` with the backend options `petrel serve` takes."""
    done = subprocess.run(
        [sys.executable, "-m", "petrel", "fsck", "--data", str(data_dir), "--rebuild-index",
         "--json", *backend_args(weed, prefix)], capture_output=True, text=True,
        timeout=120, env={**os.environ, **backend_env()}, check=False)
    assert done.returncode == 0, done.stderr
    return done


def wait_until(condition: Any, what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def backend_segments(weed: SeaweedFS, prefix: str) -> list[str]:
    listed = s3_client(weed).list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/segments/")
    return [item["Key"] for item in listed.get("Contents", [])]


def local_segments(data_dir: Path) -> list[str]:
    directory = data_dir / "segments"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def put_many(client: Any, count: int, seed: int, key_prefix: str, *, large: bool = True
             ) -> dict[str, bytes]:
    rng = random.Random(seed)
    objects = {f"{key_prefix}/{i:04d}": rng.randbytes(rng.randint(1024, 12 * 1024))
               for i in range(count)}
    if large:
        objects[f"{key_prefix}/large"] = rng.randbytes(100 * 1024)  # stored whole in S3
    for key, data in objects.items():
        client.put_object(Bucket="train", Key=key, Body=data)
    return objects


def assert_reads(client: Any, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        assert client.get_object(Bucket="train", Key=key)["Body"].read() == data, key


def test_serve_with_an_s3_backend(tmp_path: Path, weed: SeaweedFS,
                                  gateways: list[Gateway]) -> None:
    prefix = f"serve/{uuid.uuid4().hex}"
    data_dir = tmp_path / "data"
    gateway = start(tmp_path, data_dir, weed, prefix)
    gateways.append(gateway)
    assert f"backend s3://{BUCKET}/{prefix}/ at {weed.endpoint}" in gateway.log()
    client = client_of(gateway)
    client.create_bucket(Bucket="train")
    objects = put_many(client, 60, seed=1, key_prefix="img")
    # Idle for seal_idle_s: everything is sealed, uploaded, and gone from local disk.
    wait_until(lambda: local_segments(data_dir) == [] and backend_segments(weed, prefix),
               "the segments to be uploaded")
    assert_reads(client, objects)  # now ranged GETs from SeaweedFS
    assert stop_gateway(gateway, STOP_TIMEOUT_S) == 0

    # The local disk is lost: `petrel fsck --rebuild-index` on a new one, with the same
    # backend options, then a gateway on it serves every object.
    fresh = tmp_path / "fresh"
    done = fsck_rebuild(fresh, weed, prefix)
    assert json.loads(done.stdout)["rebuilt_objects"] == len(objects)
    gateway = start(tmp_path, fresh, weed, prefix)
    gateways.append(gateway)
    client = client_of(gateway)
    assert_reads(client, objects)
    listed = client.list_objects_v2(Bucket="train")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(objects)


def test_backend_options_are_checked(tmp_path: Path) -> None:
    for args, env, message in [
        (["--backend", "http://not-s3"], {}, "s3://BUCKET/PREFIX"),
        (["--backend-endpoint", "http://127.0.0.1:1"], {}, "no backend URL"),
        (["--backend", "s3://b/p"], {"PETREL_BACKEND_ACCESS_KEY": "only-half"},
         "together"),
        (["--backend", "s3://b/p"], {"PETREL_BACKEND_PATH_STYLE": "maybe"}, "true or false"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "petrel", "serve", "--data", str(tmp_path / "d"),
             "--port", "0", *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, **env}, check=False)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)


@pytest.fixture
def private_weed(tmp_path: Path) -> Iterator[SeaweedFS]:
    server = start_weed(tmp_path / "weed")
    try:
        yield server
    finally:
        server.kill()


def test_outage_through_the_gateway(tmp_path: Path, private_weed: SeaweedFS,
                                    gateways: list[Gateway]) -> None:
    weed = private_weed
    prefix = "outage"
    data_dir = tmp_path / "data"
    gateway = start(tmp_path, data_dir, weed, prefix)
    gateways.append(gateway)
    client = client_of(gateway)
    client.create_bucket(Bucket="train")
    before = put_many(client, 40, seed=2, key_prefix="before")
    wait_until(lambda: local_segments(data_dir) == [] and backend_segments(weed, prefix),
               "the segments to be uploaded")

    weed.kill()
    during = put_many(client, 40, seed=3, key_prefix="during", large=False)
    with pytest.raises(ClientError) as failed:
        client.get_object(Bucket="train", Key="before/0001")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as failed:
        client.put_object(Bucket="train", Key="during/large", Body=b"x" * 100 * 1024)
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert_reads(client, {k: during[k] for k in list(during)[:5]})  # from local disk
    log = gateway.log()
    assert f"S3 backend {weed.endpoint}/{BUCKET} unavailable" in log, log[-3000:]

    weed.start()
    assert_reads(client, before)
    wait_until(lambda: local_segments(data_dir) == [], "the backlog to be uploaded")
    assert "reachable again" in gateway.log()
    assert stop_gateway(gateway, STOP_TIMEOUT_S) == 0

    # Every acknowledged object is in the backend: rebuilt on a new disk from it alone.
    fresh = tmp_path / "fresh"
    done = fsck_rebuild(fresh, weed, prefix)
    assert json.loads(done.stdout)["rebuilt_objects"] == len(before) + len(during)
    gateway = start(tmp_path, fresh, weed, prefix)
    gateways.append(gateway)
    assert_reads(client_of(gateway), {**before, **during})


def test_reader_processes_read_the_read_cache(tmp_path: Path, weed: SeaweedFS,
                                              gateways: list[Gateway]) -> None:
    """With an S3 backend, reader processes answer GETs of uploaded segments from the
    blocks the primary's read cache holds: with the primary frozen (SIGSTOP), GETs on
    new connections that land on a reader are answered, byte-identical."""
    import signal

    prefix = f"readers/{uuid.uuid4().hex}"
    data_dir = tmp_path / "data"
    config = tmp_path / "petrel.toml"
    config.write_text(CONFIG, encoding="utf-8")
    gateway = start_gateway(str(data_dir), "--config", str(config), "--processes", "3",
                            "--access-key", GATEWAY_ACCESS_KEY,
                            "--secret-key", GATEWAY_SECRET_KEY, *backend_args(weed, prefix),
                            env=backend_env(), timeout_s=START_TIMEOUT_S)
    gateways.append(gateway)
    wait_until(lambda: gateway.log().count(") serving GET, HEAD, batch get") == 2, "the readers")
    client = client_of(gateway)
    client.create_bucket(Bucket="train")
    objects = put_many(client, 40, seed=3, key_prefix="cached", large=False)
    wait_until(lambda: local_segments(data_dir) == [] and backend_segments(weed, prefix),
               "the segments to be uploaded")
    assert_reads(client, objects)  # fetched into the primary's cache (readers hand over)
    keys = sorted(objects)

    def hits() -> float:
        with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("petrel_read_cache_hits_total "):
                    return float(line.split()[1])
        raise AssertionError("no petrel_read_cache_hits_total")

    hits_before = hits()
    os.kill(gateway.process.pid, signal.SIGSTOP)
    answered = 0
    try:
        for attempt in range(24):
            fresh = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                                 aws_access_key_id=GATEWAY_ACCESS_KEY,
                                 aws_secret_access_key=GATEWAY_SECRET_KEY,
                                 config=Config(s3={"addressing_style": "path"},
                                               retries={"total_max_attempts": 1},
                                               connect_timeout=0.5, read_timeout=0.5))
            key = keys[attempt % len(keys)]
            try:
                body = fresh.get_object(Bucket="train", Key=key)["Body"].read()
            except Exception:  # noqa: BLE001 - a connection the frozen primary holds
                continue
            assert body == objects[key]
            answered += 1
    finally:
        os.kill(gateway.process.pid, signal.SIGCONT)
    assert answered > 0
    # The readers report the blocks they read: the primary's hit count includes them.
    wait_until(lambda: hits() >= hits_before + answered, "the readers' cache hits")
    assert_reads(client_of(gateway), objects)


def test_reader_processes_answer_batch_gets_cold_and_warm(tmp_path: Path, weed: SeaweedFS,
                                                          gateways: list[Gateway]) -> None:
    """Batch gets over an S3 backend, on many connections (the kernel spreads them over
    the primary and the readers): cold, a reader finds a block the read cache does not
    hold when it reads and hands the connection to the primary, which fetches it;
    warm, with the primary frozen (SIGSTOP), readers answer from the cache's blocks.
    Every answer is byte-identical, missing keys included."""
    import signal

    from petrel import Client
    from petrel.transport import RetryPolicy, Timeouts

    prefix = f"readers-batch/{uuid.uuid4().hex}"
    config = tmp_path / "petrel.toml"
    config.write_text(CONFIG, encoding="utf-8")
    gateway = start_gateway(str(tmp_path / "data"), "--config", str(config), "--processes",
                            "3", "--access-key", GATEWAY_ACCESS_KEY,
                            "--secret-key", GATEWAY_SECRET_KEY, *backend_args(weed, prefix),
                            env=backend_env(), timeout_s=START_TIMEOUT_S)
    gateways.append(gateway)
    wait_until(lambda: gateway.log().count(") serving GET, HEAD, batch get") == 2, "the readers")
    client_of(gateway).create_bucket(Bucket="train")
    objects = put_many(client_of(gateway), 60, seed=5, key_prefix="batch", large=False)
    wait_until(lambda: local_segments(tmp_path / "data") == [] and backend_segments(weed, prefix),
               "the segments to be uploaded")
    conf = tmp_path / "petreloss.conf"
    conf.write_text(f"[DEFAULT]\ndefault_cluster = c\n[c]\nhost_base = {gateway.endpoint}\n"
                    f"access_key = {GATEWAY_ACCESS_KEY}\nsecret_key = {GATEWAY_SECRET_KEY}\n"
                    # Batch gets, which readers answer (batch locates go to the primary).
                    "short_circuit = false\n",
                    encoding="utf-8")
    keys = sorted(objects)
    urls = [f"s3://train/{key}" for key in keys] + ["s3://train/batch-missing"]
    expected = [objects[key] for key in keys] + [None]

    def batch_on_a_new_connection(retry: RetryPolicy | None = None,
                                  timeouts: Timeouts | None = None) -> list[bytes | None]:
        fresh = Client(str(conf), batch_size=1000, retry=retry, timeouts=timeouts)
        try:
            return fresh.get_batch(urls)
        finally:
            fresh.close()

    for _ in range(8):  # cold, then warming: wherever the connection lands
        assert batch_on_a_new_connection() == expected
    os.kill(gateway.process.pid, signal.SIGSTOP)
    answered = 0
    try:
        quick = RetryPolicy(attempts_max=1, backoff_first_s=0.01, backoff_max_s=0.01,
                            elapsed_s_max=1.0)
        for _ in range(16):
            try:
                got = batch_on_a_new_connection(quick, Timeouts(connect_s=0.5, read_s=0.5))
            except Exception:  # noqa: BLE001 - a connection the frozen primary holds
                continue
            assert got == expected
            answered += 1
    finally:
        os.kill(gateway.process.pid, signal.SIGCONT)
    assert answered > 0
