"""A real gateway on loopback, started the way users start it (`petrel serve` in its own
process), and real boto3 clients against it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully, make_client

from petrel.testing.gateway import Gateway, free_port, start_gateway, stop_gateway

__all__ = ["Gateway", "free_port", "make_client", "start_gateway", "stop_gateway"]


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
