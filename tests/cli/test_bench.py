"""`petrel bench --qps` run as a user runs it, against a live gateway: the operations it
reports are the ones the server counted, refusals are reported as errors, and it
cleans up after itself. Counting is tested, never speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from petrel.testing.gateway import Gateway, start_gateway, stop_gateway

ACCESS_KEY = "PKBENCHTESTKEY000001"
SECRET_KEY = "bench-test-secret-0123456789abcdefghij"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = str(tmp_path_factory.mktemp("bench-gateway") / "data")
    running = start_gateway(data_dir, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


def served(gateway: Gateway) -> dict[tuple[str, str], float]:
    """petrel_requests_total by (operation, status), from /metrics."""
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'petrel_requests_total\{operation="([^"]+)",status="(\d+)"\} (\S+)'
    return {(op, status): float(v) for op, status, v in re.findall(pattern, text)}


def bench(gateway: Gateway, *args: str, secret: str = SECRET_KEY,
          endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PETREL_ACCESS_KEY": ACCESS_KEY, "PETREL_SECRET_KEY": secret,
           "HOME": os.path.dirname(gateway.data_dir)}
    command = [sys.executable, "-m", "petrel", "bench", "--qps", "--endpoint",
               endpoint or gateway.endpoint, "--processes", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float],
          operation: str, status: str) -> float:
    return after.get((operation, status), 0.0) - before.get((operation, status), 0.0)


@pytest.mark.parametrize(("mode", "operation"), [("get", "get_object"),
                                                  ("put", "put_object"),
                                                  ("batch-get", "batch_get_objects"),
                                                  ("list", "list_objects_v2")])
def test_reported_operations_are_what_the_server_counted(gateway: Gateway, mode: str,
                                                         operation: str) -> None:
    bucket = "bench-" + uuid.uuid4().hex[:12]
    before = served(gateway)
    done = bench(gateway, "--mode", mode, "--bucket", bucket, "--objects", "40",
                 "--size", "1KiB-4KiB", "--concurrency", "6", "--ops", "123",
                 "--batch-size", "7", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    after = served(gateway)
    assert report["ops"] == report["requests_sent"] == 123
    assert report["errors_total"] == 0
    assert delta(after, before, operation, "200") == 123
    if mode == "batch-get":
        assert report["objects_per_s"] == pytest.approx(report["ops_per_s"] * 7, rel=0.01)
    prepared = 0 if mode == "put" else 40
    assert delta(after, before, "put_object", "200") == prepared + (123 if mode == "put" else 0)
    # Cleanup: every key deleted once, then the bucket it created.
    assert delta(after, before, "delete_object", "204") == 40
    assert delta(after, before, "delete_bucket", "204") == 1
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] \
        <= report["latency_ms"]["max"]


def test_refusals_are_counted_as_errors(gateway: Gateway) -> None:
    """With --no-prepare the run goes ahead on objects that do not exist: every GET is
    refused 404 and reported as such, none as a success."""
    bucket = "bench-" + uuid.uuid4().hex[:12]
    done = bench(gateway, "--mode", "get", "--bucket", bucket, "--objects", "10",
                 "--no-prepare", "--ops", "50", "--concurrency", "4", "--json")
    report = json.loads(done.stdout)
    assert report["ops"] == 0
    assert report["errors"] == {"http-404": 50}
    assert done.returncode == 1


def test_wrong_key_fails_with_a_clear_error(gateway: Gateway) -> None:
    done = bench(gateway, "--mode", "get", "--ops", "10", secret="wrong-secret-key-000000000")
    assert done.returncode == 1
    assert "HTTP 403" in done.stderr and "SignatureDoesNotMatch" in done.stderr


def test_unreachable_endpoint_fails_with_a_clear_error(gateway: Gateway) -> None:
    done = bench(gateway, "--mode", "get", "--ops", "10", endpoint="http://127.0.0.1:9")
    assert done.returncode == 1
    assert "connection" in done.stderr.lower()


def test_table_output_and_keep(gateway: Gateway) -> None:
    bucket = "bench-" + uuid.uuid4().hex[:12]
    done = bench(gateway, "--mode", "mixed", "--ratio", "1:1", "--bucket", bucket,
                 "--objects", "20", "--duration", "1", "--warmup", "0.2", "--keep",
                 "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    for label in ("ops/s", "MB/s", "p99.9", "errors", "2 processes x 4 connections"):
        assert label in done.stdout
    again = bench(gateway, "--mode", "get", "--bucket", bucket, "--objects", "20",
                  "--no-prepare", "--ops", "20", "--json")
    assert json.loads(again.stdout)["errors_total"] == 0  # --keep left the objects
