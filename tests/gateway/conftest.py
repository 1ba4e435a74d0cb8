"""A real gateway on loopback, started the way users start it (`petrel serve` in its own
process), and real boto3 clients against it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    endpoint: str
    port: int
    data_dir: str
    process: subprocess.Popen[bytes]
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def start_gateway(data_dir: str, *extra: str, env: dict[str, str] | None = None,
                  timeout_s: float = 30.0) -> Gateway:
    port = free_port()
    log_path = os.path.join(os.path.dirname(data_dir), f"gateway-{port}.log")
    command = [sys.executable, "-m", "petrel", "serve", "--data", data_dir,
               "--host", "127.0.0.1", "--port", str(port), *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    gateway = Gateway(f"http://127.0.0.1:{port}", port, data_dir, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited {process.returncode}:\n{gateway.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return gateway
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"gateway did not start in {timeout_s}s:\n{gateway.log()}")


def stop_gateway(gateway: Gateway, timeout_s: float = 30.0) -> int:
    if gateway.process.poll() is None:
        gateway.process.terminate()
        try:
            gateway.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()
    return gateway.process.returncode


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = str(tmp_path_factory.mktemp("gateway") / "data")
    # Small limits so multipart and large-object paths run with small test data.
    config = os.path.join(os.path.dirname(data_dir), "petrel.toml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write("[store]\npack_threshold_bytes = 65536\n"
                     "segment_bytes_max = 4194304\n")
    running = start_gateway(data_dir, "--config", config, "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


def make_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                **config: object):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1},
                         "signature_version": "s3v4", **config}))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def s3(gateway: Gateway):  # type: ignore[no-untyped-def]
    return make_client(gateway.endpoint)


@pytest.fixture
def bucket(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh bucket per test, emptied and removed afterwards."""
    name = "t-" + uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    yield name
    delete_bucket_fully(s3, name)
