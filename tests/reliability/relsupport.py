"""Shared by the reliability suites (issue 9): gateways started the way users start
them (`python -m petrel serve`), with small segments so that rolling, sealing and
compaction happen within a test, and signed raw clients for them."""

from __future__ import annotations

import http.client
from pathlib import Path

from petrel.testing.gateway import Gateway, start_gateway
from petrel.testing.s3raw import S3Raw

ACCESS_KEY = "PKRELIABILITY0000001"
SECRET_KEY = "reliability-secret-0123456789abcdefghij"

# Small enough that segments roll and seal, and large objects (over the threshold,
# stored whole) appear, with test-sized data.
SMALL_STORE_TOML = """\
[server]
# Short, so tests/reliability/test_hostile_input.py sees slow clients cut off quickly.
idle_connection_timeout_s = 3.0

[store]
pack_threshold_bytes = 65536
segment_bytes_max = 524288
seal_idle_s = 1.0
compaction_dead_fraction = 0.2
"""


def write_config(directory: Path, text: str = SMALL_STORE_TOML) -> str:
    path = directory / "petrel.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def launch(directory: Path, *extra: str, config: str | None = None,
           env: dict[str, str] | None = None) -> Gateway:
    data_dir = str(directory / "data")
    config_path = config if config is not None else write_config(directory)
    return start_gateway(data_dir, "--config", config_path, "--access-key", ACCESS_KEY,
                         "--secret-key", SECRET_KEY, *extra, env=env)


def client(gateway: Gateway, timeout_s: float = 30.0) -> S3Raw:
    return S3Raw(gateway.endpoint, ACCESS_KEY, SECRET_KEY, timeout_s=timeout_s)


def serves(gateway: Gateway) -> bool:
    """The gateway answers a signed request (ListBuckets) with 200."""
    with client(gateway, timeout_s=10.0) as s3:
        return s3.request("GET", "/").status == 200


def unsigned_get(gateway: Gateway, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """An unsigned GET (/metrics, /healthz): (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def metric(gateway: Gateway, name: str) -> float:
    """The value of an unlabelled metric from /metrics."""
    status, body = unsigned_get(gateway, "/metrics")
    assert status == 200, body[:500]
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
