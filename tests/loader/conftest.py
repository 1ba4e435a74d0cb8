"""A real gateway on loopback (started with tests/gateway's helpers), a petreloss.conf
pointing `petrel.Client` at it, and a bucket of small objects for the loaders."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GATEWAY_TESTS = Path(__file__).resolve().parent.parent / "gateway"
sys.path.insert(0, str(GATEWAY_TESTS))

from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully, make_client  # noqa: E402

from petrel.client import Client  # noqa: E402
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway  # noqa: E402


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = str(tmp_path_factory.mktemp("loader-gateway") / "data")
    running = start_gateway(data_dir, "--access-key", ACCESS_KEY,
                                    "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


def _write_conf(path: Path, gateway: Gateway, short_circuit: str) -> str:
    path.write_text(f"[DEFAULT]\ndefault_cluster = test\n\n[test]\n"
                    f"host_base = {gateway.endpoint}\naccess_key = {ACCESS_KEY}\n"
                    f"secret_key = {SECRET_KEY}\nshort_circuit = {short_circuit}\n",
                    encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def conf_path(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Reads through the gateway: what the pre-read cache serves (on the gateway's
    machine the client would read records itself: `local_conf_path`)."""
    return _write_conf(tmp_path_factory.mktemp("loader-conf") / "petreloss.conf", gateway,
                       "false")


@pytest.fixture(scope="session")
def local_conf_path(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Short-circuit reads (petrel.shortcircuit), as by default on loopback."""
    return _write_conf(tmp_path_factory.mktemp("loader-conf") / "petreloss.conf", gateway,
                       "auto")


@pytest.fixture(scope="session")
def client(conf_path: str) -> Iterator[Client]:
    made = Client(conf_path, batch_size=1000)
    yield made
    made.close()


@pytest.fixture(scope="session")
def s3(gateway: Gateway):  # type: ignore[no-untyped-def]
    return make_client(gateway.endpoint)


@pytest.fixture
def bucket(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = "l-" + uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    yield name
    delete_bucket_fully(s3, name)


@dataclass(frozen=True)
class Objects:
    """Objects stored for a test: URLs in key order, and each one's SHA-256."""

    bucket: str
    urls: list[str]
    digests: dict[str, str]
    sizes: dict[str, int]


def store_objects(client: Client, bucket: str, count: int, *, prefix: str = "data/",
                  size_max: int = 3000) -> Objects:
    """`count` objects of 1..size_max random bytes, stored with batch puts."""
    urls = [f"s3://{bucket}/{prefix}{i:05d}.bin" for i in range(count)]
    datas = [os.urandom(1 + (i * 7919) % size_max) for i in range(count)]
    client.put_batch(list(zip(urls, datas, strict=True)))
    return Objects(bucket, urls, {u: hashlib.sha256(d).hexdigest() for u, d in
                                  zip(urls, datas, strict=True)},
                   {u: len(d) for u, d in zip(urls, datas, strict=True)})


@pytest.fixture
def objects(client: Client, bucket: str) -> Objects:
    return store_objects(client, bucket, 600)


def batch_gets(gateway: Gateway, operation: str = "batch_get_objects") -> int:
    """BatchGetObjects (or `operation`) requests the gateway has answered with 200
    (from /metrics)."""
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("petrel_requests_total{") and \
                f'operation="{operation}"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
