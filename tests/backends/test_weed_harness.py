"""The SeaweedFS harness the backend tests stand on: a first start whose port is taken
by another program is tried again on fresh ports, instead of failing every test that
needs SeaweedFS (what one CI run saw: the filer's port taken, 90 errors)."""

from __future__ import annotations

import socket
from pathlib import Path

from weed import ACCESS_KEY, SECRET_KEY, require_weed, s3_client

from petrel.testing.seaweedfs import _PORT_RANGE, HOST, SeaweedFS, server_ports


def test_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    ports = server_ports()
    assert len(set(ports.values())) == len(ports) == 8
    assert all(_PORT_RANGE[0] <= port < _PORT_RANGE[1] for port in ports.values())


def test_a_first_start_on_a_taken_port_moves_to_fresh_ports(tmp_path: Path) -> None:
    require_weed()
    weed = SeaweedFS.create(str(tmp_path / "data"), str(tmp_path / "weed.log"),
                            access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                            volume_size_limit_mb=64)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, weed.ports["filer"]))
        squatter.listen(1)
        taken = weed.ports["filer"]
        try:
            weed.start()
            assert weed.ports["filer"] != taken
            assert b"address already in use" in (tmp_path / "weed.log").read_bytes()
            s3_client(weed).create_bucket(Bucket="harness")
            names = [b["Name"] for b in s3_client(weed).list_buckets()["Buckets"]]
            assert "harness" in names
        finally:
            weed.kill()
