"""A real gateway on loopback (`petrel serve` in its own process, started the way
tests/gateway starts it) and a petreloss.conf pointing `petrel.Client` at it."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

GATEWAY_TESTS = Path(__file__).resolve().parent.parent / "gateway"
sys.path.insert(0, str(GATEWAY_TESTS))

from clientconf import TEST_RETRY, write_conf  # noqa: E402
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully, make_client  # noqa: E402

from petrel.client import Client  # noqa: E402
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway  # noqa: E402


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = str(tmp_path_factory.mktemp("client-gateway") / "data")
    running = start_gateway(data_dir, "--access-key", ACCESS_KEY,
                                    "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


@pytest.fixture(scope="session")
def conf_path(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_conf(tmp_path_factory.mktemp("conf") / "petreloss.conf", gateway.endpoint)


@pytest.fixture(scope="session")
def client(conf_path: Path) -> Iterator[Client]:
    made = Client(str(conf_path), retry=TEST_RETRY)
    yield made
    made.close()


@pytest.fixture(scope="session")
def s3(gateway: Gateway):  # type: ignore[no-untyped-def]
    return make_client(gateway.endpoint)


@pytest.fixture
def bucket(s3) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh bucket per test, emptied and removed afterwards (with boto3, so a client
    bug cannot hide behind its own cleanup)."""
    name = "c-" + uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    yield name
    delete_bucket_fully(s3, name)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME pointed at a temporary folder, so `~/petreloss.conf` is never the real one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert os.path.expanduser("~") == str(tmp_path)
    return tmp_path
