"""The fast lane when a read must wait (a cold or remote segment): the answer comes
when the read is done, the connection takes no other request meanwhile, and what the
client sent on is answered after, in order.

In process, over a real store and app, with a transport that records what is written.
The one stand-in is `read_object_now` answering None, as it does for a segment that is
not in the page cache: a state a test cannot produce reliably on a real disk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from petrel.settings import StoreConfig
from petrel.sigv4 import Signer
from petrel_gateway.app import build_app, inflight_requests
from petrel_gateway.auth import Credentials
from petrel_gateway.context import STORE
from petrel_gateway.fastlane import FastLane
from petrel_gateway.settings import GatewaySettings

KEY_ID, SECRET = "LANETESTKEY000000001", "lane-test-secret"
HOST = "127.0.0.1:9000"


class RecordingTransport:
    """The asyncio.Transport calls the lane makes, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.fixture
async def lane(tmp_path: Any) -> AsyncIterator[FastLane]:
    settings = GatewaySettings(credentials=Credentials.of({KEY_ID: SECRET}))
    app = build_app(settings, StoreConfig(data_dir=str(tmp_path / "data")))
    runner = web.AppRunner(app)
    await runner.setup()
    store = app[STORE]
    await store.create_bucket("cold")
    for key in ("a", "b"):
        await store.put_object("cold", key, key.encode() * 100)
    assert runner.server is not None
    lane = FastLane(app, runner.server, idle_timeout_s=60)
    yield lane
    lane.close()
    await runner.cleanup()


def _get(key: str) -> bytes:
    query = Signer(KEY_ID, SECRET).presign("GET", HOST, f"/cold/{key}")
    return f"GET /cold/{key}?{query} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def _bodies(written: bytes) -> list[bytes]:
    """Response bodies in order (each response: head, blank line, Content-Length bytes)."""
    bodies = []
    rest = bytes(written)
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        bodies.append(rest[:length])
        rest = rest[length:]
    return bodies


async def test_a_read_that_waits_is_answered_when_done(lane: FastLane,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = lane.app[STORE]
    monkeypatch.setattr(store, "read_object_now", lambda located, byte_range=None: None)
    connection = lane()
    transport = RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(_get("a"))
    assert connection.busy and transport.written == b""
    assert inflight_requests(lane.app) == 1  # a shutdown drain waits for it
    connection.data_received(_get("b"))  # sent on before the answer: held
    for _ in range(100):
        if not connection.busy and len(_bodies(transport.written)) == 2:
            break
        await asyncio.sleep(0.01)
    assert _bodies(transport.written) == [b"a" * 100, b"b" * 100]
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert inflight_requests(lane.app) == 0
    assert lane.served == 2 and lane.handed_over == 0


async def test_idle_connections_are_closed(lane: FastLane) -> None:
    lane.idle_timeout_s = 0.01
    connection = lane()
    transport = RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    await asyncio.sleep(0.6)  # the sweep runs at least every half second
    assert transport.closed
