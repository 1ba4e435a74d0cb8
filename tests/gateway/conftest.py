"""A real gateway on loopback, started the way users start it (`petrel serve` in its own
process), and real boto3 clients against it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from rawhttp import ACCESS_KEY, SECRET_KEY, delete_bucket_fully

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
