"""A reader process of the gateway (`python -m petrel_gateway.worker FD WRITE_FD`):
started by the primary (petrel_gateway.workers) when `server.processes` is more than 1.

It listens on the gateway's port beside the primary (SO_REUSEPORT: the kernel spreads
new connections over the processes) and answers, in its fast lane, GETs and HEADs of
packed objects from a replica of the store (petrel.replica). It takes small PUTs too:
checked here, stored by the primary over the write link (petrel_gateway.writes). Every
other request, and any read it cannot answer, goes to the primary with its connection:
the socket's descriptor and the bytes received so far travel over the channel
(petrel_gateway.channel) and the connection is the primary's from then on.

Its settings arrive pickled on stdin; FD is its end of the channel, WRITE_FD its end
of the write link. It stops on
SIGTERM (after draining its requests, as `petrel serve` does) and when the channel
ends (the primary is gone); it ignores SIGINT and SIGHUP, which the primary handles for
the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Any, cast

from aiohttp import web

from petrel import allocator
from petrel.replica import Replica, replica_dir
from petrel_gateway import channel as ch
from petrel_gateway.app import INFLIGHT, METRICS, REQUEST_IDS, Inflight, RequestIds, reconfigure
from petrel_gateway.authn import VERIFIER, make_verifier
from petrel_gateway.context import QOS, SETTINGS, STORE
from petrel_gateway.fastlane import FastLane
from petrel_gateway.memory import trim_periodically
from petrel_gateway.metrics import Metrics
from petrel_gateway.qos import Qos
from petrel_gateway.writes import WriteClient

log = logging.getLogger("petrel.worker")

# How often a connection handed on waits for its last answer to leave the socket.
_DRAIN_POLL_S = 0.001
# How often read-cache blocks read here are reported to the primary.
_TOUCHED_EVERY_S = 1.0


def build_worker_app(settings: Any, replica: Replica) -> web.Application:
    """The app state the fast lane reads (no routes: a reader has no aiohttp stack)."""
    app = web.Application()
    app[SETTINGS] = settings
    app[QOS] = Qos(settings.qos)
    app[INFLIGHT] = Inflight()
    app[REQUEST_IDS] = RequestIds()
    app[VERIFIER] = make_verifier(settings)
    app[STORE] = cast(Any, replica)
    metrics = app[METRICS] = Metrics(None)
    app[QOS].on_throttle = metrics.throttle
    return app


class _Reader:
    def __init__(self, link: ch.Channel, write_link: socket.socket, settings: Any,
                 store_config: Any, number: int) -> None:
        self.link = link
        self.write_link = write_link
        self.settings = settings
        self.store_config = store_config
        self.number = number
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def pass_on(self, transport: asyncio.Transport, received: bytes,
                deadline: float | None = None) -> None:
        """Hand a connection to the primary once its last answer is written (the
        primary must not write before it); one whose client stops reading that answer
        is closed after idle_connection_timeout_s, as an idle one would be."""
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.settings.idle_connection_timeout_s
            if now > deadline:
                transport.abort()
                return
            self.loop.call_later(_DRAIN_POLL_S, self.pass_on, transport, received, deadline)
            return
        sock = transport.get_extra_info("socket")
        try:
            self.link.send(ch.HAND_OVER, received, sock.fileno())
        except ch.ChannelClosed:
            log.warning("reader %d: the primary is gone; closing a connection it cannot "
                        "take", self.number)
        # Closes this process's descriptor only: the connection lives on in the primary.
        transport.close()

    def listen(self, app: web.Application) -> None:
        """The channel, read in a thread: metrics requests, reloaded settings, and its
        end (the primary is gone: stop)."""
        while True:
            try:
                kind, payload, fd = self.link.receive()
            except ch.ChannelClosed:
                with contextlib.suppress(RuntimeError):  # the loop closed first: stopped
                    self.loop.call_soon_threadsafe(self.stop.set)
                return
            if fd is not None:
                os.close(fd)
            if kind == ch.COLLECT:
                try:
                    self.link.send(ch.SAMPLES, pickle.dumps(app[METRICS].samples()))
                except ch.ChannelClosed:
                    continue
            elif kind == ch.SETTINGS:
                try:
                    self.loop.call_soon_threadsafe(self._reconfigure, app,
                                                   pickle.loads(payload))
                except RuntimeError:  # the loop is closed: stopping
                    return

    def _report_touched(self, replica: Replica) -> None:
        """Every second: the read-cache blocks read here, so that the primary's LRU
        keeps what readers read and its hit count includes theirs."""
        blocks, hits = replica.backend.take_touched()
        if hits:
            try:
                self.link.send(ch.TOUCHED, pickle.dumps((blocks, hits)))
            except ch.ChannelClosed:
                return
        if not self.stop.is_set():
            self.loop.call_later(_TOUCHED_EVERY_S, self._report_touched, replica)

    def _reconfigure(self, app: web.Application, settings: Any) -> None:
        changes = reconfigure(app, settings)
        if changes:
            log.info("reader %d reloaded: %s", self.number, ", ".join(changes))

    async def run(self, host: str, port: int) -> None:
        secondary = os.path.join(replica_dir(self.store_config.data_dir),
                                 f"reader-{self.number}")
        replica = Replica(self.store_config, secondary)
        app = build_worker_app(self.settings, replica)
        lane = FastLane(app, cast(Any, None), self.settings.idle_connection_timeout_s,
                        pass_on=self.pass_on)
        _, replica.writes = await self.loop.create_unix_connection(WriteClient,
                                                                   sock=self.write_link)
        lane.takes_writes = True
        app[METRICS].watch_fast_lane(lambda: (lane.served, lane.handed_over))
        app[METRICS].watch_replica(lambda: (replica.catch_ups, replica.catch_up_s))
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        # The primary handles these for the group: a Ctrl-C, or a reload sent to every
        # process by name (reloaded settings reach readers over the channel).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        server = await self.loop.create_server(lane, host, port, reuse_port=True)
        threading.Thread(target=self.listen, args=(app,), name="petrel-channel",
                         daemon=True).start()
        self._report_touched(replica)
        log.info("reader %d (pid %d) serving GET, HEAD, batch get and small PUTs on %s:%d",
                 self.number, os.getpid(), host, port)
        gc.freeze()  # as the primary does (petrel.cli.serve): startup objects stay
        if self.settings.memory_trim_interval_s > 0:  # what is kept is handed back
            allocator.tune(allocator.SERVER_THRESHOLD_BYTES,
                           allocator.SERVER_THRESHOLD_BYTES)
        trimmer = asyncio.create_task(
            trim_periodically(self.settings.memory_trim_interval_s))
        await self.stop.wait()
        trimmer.cancel()
        app[INFLIGHT].draining = True  # new requests go to the primary meanwhile
        server.close()
        deadline = time.monotonic() + self.settings.shutdown_drain_s
        while app[INFLIGHT].count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        lane.close()
        replica.close()


def main() -> int:
    import uvloop

    fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    settings, store_config, host, port, number, level = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    link = ch.Channel(socket.socket(fileno=fd))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def run() -> None:
        await _Reader(link, socket.socket(fileno=write_fd), settings, store_config,
                      number).run(host, port)

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
