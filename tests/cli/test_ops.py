"""`petrel stats` and `petrel compact` against a live gateway, run as a user runs them:
the numbers they print are the store's, and compaction reclaims dead bytes without
losing a live object."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from petrel.testing.gateway import Gateway, start_gateway, stop_gateway

ACCESS_KEY = "PKOPSTESTKEY00000001"
SECRET_KEY = "ops-test-secret-0123456789abcdefghijk"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("ops-gateway")
    config = root / "petrel.toml"
    # Small segments so a few MiB of writes seal some; no background compaction, so
    # only `petrel compact` reclaims.
    config.write_text("[store]\nsegment_bytes_max = 1048576\npack_threshold_bytes = 65536\n"
                      "compaction_dead_fraction = 0.99\n")
    running = start_gateway(str(root / "data"), "--config", str(config),
                            "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


def petrel(gateway: Gateway, *args: str, secret: str = SECRET_KEY
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PETREL_ACCESS_KEY": ACCESS_KEY, "PETREL_SECRET_KEY": secret,
           "PETREL_ENDPOINT": gateway.endpoint, "HOME": os.path.dirname(gateway.data_dir)}
    return subprocess.run([sys.executable, "-m", "petrel", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def stats(gateway: Gateway) -> dict[str, int]:
    done = petrel(gateway, "stats", "--json")
    assert done.returncode == 0, done.stderr
    store: dict[str, int] = json.loads(done.stdout)["store"]
    return store


def test_stats_and_compact_reclaim_dead_bytes(gateway: Gateway) -> None:
    s3 = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                      config=Config(signature_version="s3v4",
                                    s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="ops")
    objects = {f"o/{i:04d}": os.urandom(10_000) for i in range(400)}
    for key, data in objects.items():
        s3.put_object(Bucket="ops", Key=key, Body=data)
    before = stats(gateway)
    assert before["objects"] == 400 and before["buckets"] == 1
    assert before["sealed_segments"] >= 2 and before["dead_bytes"] == 0

    doomed = [k for i, k in enumerate(objects) if i % 4]  # three in four
    for start in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket="ops", Delete={
            "Objects": [{"Key": k} for k in doomed[start : start + 1000]]})
    dead = stats(gateway)
    assert dead["objects"] == 100 and dead["dead_bytes"] > 2_000_000

    table = petrel(gateway, "stats")
    assert table.returncode == 0 and "dead bytes" in table.stdout and "100" in table.stdout

    done = petrel(gateway, "compact", "--rate", "8MiB", "--dead-fraction", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["segments_compacted"] >= 2
    assert report["dead_bytes_after"] < report["dead_bytes_before"] == dead["dead_bytes"]
    assert report["bytes_reclaimed"] > 2_000_000
    after = stats(gateway)
    assert after["objects"] == 100 and after["dead_bytes"] == report["dead_bytes_after"]
    # The compacted segments wait out the delete grace period, counted apart.
    assert after["retired_segments"] == report["segments_compacted"]
    assert after["retired_bytes"] > 0
    for key, data in objects.items():
        if key in doomed:
            continue
        body = s3.get_object(Bucket="ops", Key=key)["Body"].read()
        assert hashlib.md5(body).digest() == hashlib.md5(data).digest(), key


def test_commands_need_valid_keys_and_sane_arguments(gateway: Gateway) -> None:
    refused = petrel(gateway, "stats", secret="not-the-right-secret-000000")
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr
    assert "SignatureDoesNotMatch" in refused.stderr
    bad = petrel(gateway, "compact", "--dead-fraction", "1.5")
    assert bad.returncode == 2 and "--dead-fraction" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "petrel", "stats", "--endpoint",
                           "http://127.0.0.1:9", "--access-key", "a", "--secret-key", "b"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach the gateway" in down.stderr


def test_admin_paths_refuse_anonymous_requests(gateway: Gateway) -> None:
    import urllib.error
    import urllib.request

    for method, path in (("GET", "/_petrel/stats"), ("POST", "/_petrel/compact")):
        request = urllib.request.Request(gateway.endpoint + path, method=method, data=None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert b"AccessDenied" in refused.value.read()
