"""A tiny aiohttp server in a thread, for faults a real gateway does not produce on
demand (SlowDown, 500s, streams cut short). It answers whatever `handler` returns and
ignores authentication; `requests` counts what it was sent."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]

START_TIMEOUT_S = 10.0


@dataclass
class FakeServer:
    endpoint: str
    requests: list[tuple[str, str]] = field(default_factory=list)


def error_response(status: int, code: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>fake {code}</Message><Resource>/</Resource></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fake_server(handler: Handler) -> Iterator[FakeServer]:
    """Serve `handler(request, n)` (n counts requests from 1) on 127.0.0.1 until exit."""
    port = _free_port()
    server = FakeServer(f"http://127.0.0.1:{port}")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        server.requests.append((request.method, request.path_qs))
        return await handler(request, len(server.requests))

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner_box[0].cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-s3", daemon=True)
    thread.start()
    assert ready.wait(START_TIMEOUT_S), "fake server did not start"
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
