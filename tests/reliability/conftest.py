"""Fixtures of the reliability suites: one gateway per test module (small segments),
a signed raw client, a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from relsupport import client, launch

from petrel.testing.gateway import Gateway, stop_gateway
from petrel.testing.s3raw import S3Raw


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = launch(tmp_path_factory.mktemp("reliability"))
    yield running
    code = stop_gateway(running)
    assert code == 0, running.log()


@pytest.fixture
def s3(gateway: Gateway) -> Iterator[S3Raw]:
    with client(gateway) as raw:
        yield raw


@pytest.fixture
def bucket(s3: S3Raw) -> str:
    name = f"r-{uuid.uuid4().hex[:24]}"
    response = s3.create_bucket(name)
    assert response.status == 200, response.body
    return name
