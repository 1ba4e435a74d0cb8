"""The load generator's ceiling: a bare aiohttp+uvloop server with no storage behind it.

    python -m bench.s3_ceiling --port P --size-bytes 10240

GET (any path) answers 200 with `--size-bytes` bytes held in memory; PUT (any path) reads
the body to the end and answers 200 with an empty body. No auth, no routing, no
middlewares, no access log: whatever rate wrk reaches against this process, on this
machine, is the most an aiohttp+uvloop gateway could serve, and the most that wrk (sharing
the same cores) can measure. Runs in its own process so it competes for the CPU the same
way the gateways do. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from aiohttp import web

BODY = web.AppKey("bench.ceiling.body", bytes)
# Request bodies up to this size are accepted (the largest benchmarked object is 100 KiB).
CLIENT_MAX_SIZE_BYTES = 8 * 1024 * 1024


async def get_object(request: web.Request) -> web.Response:
    return web.Response(body=request.app[BODY], content_type="application/octet-stream")


async def put_object(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


def build_app(size_bytes: int) -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE_BYTES)
    app[BODY] = b"x" * size_bytes
    app.router.add_get("/{tail:.*}", get_object, allow_head=False)
    app.router.add_put("/{tail:.*}", put_object)
    return app


async def serve(host: str, port: int, size_bytes: int) -> None:
    runner = web.AppRunner(build_app(size_bytes), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"ceiling: serving on http://{host}:{port} ({size_bytes} B)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size-bytes", type=int, default=10 * 1024)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port, args.size_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
