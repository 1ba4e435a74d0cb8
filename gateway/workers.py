"""The primary's side of reader processes (`server.processes` > 1; see
petrel_gateway.worker): starting them, taking the connections they pass on, storing
the small PUTs they take (petrel_gateway.writes), restarting one that dies, collecting
their metrics, passing reloaded settings, stopping them.

One Python process serves about 9.5k GETs/s of 10 KiB objects on one core. Readers let
GETs, HEADs and the checking of small PUTs (authentication, digests) use the other
cores; every write is still made by the one process that owns the store, so nothing
about durability or ordering changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from petrel.replica import Generation, replica_dir
from petrel_gateway import channel as ch
from petrel_gateway.fastlane import FastLane
from petrel_gateway.metrics import Samples, add_samples
from petrel_gateway.writes import WriteServer

log = logging.getLogger("petrel.workers")

# A reader that dies is started again after this long (then twice as long, up to the
# maximum, while it keeps dying within a minute of its start).
_RESTART_DELAY_S = 0.5
_RESTART_DELAY_S_MAX = 30.0
_STABLE_S = 60.0
# How long a scrape of /metrics waits for each reader's numbers.
_COLLECT_TIMEOUT_S = 2.0


class _Reader:
    """One reader process and the primary's end of its channel."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: subprocess.Popen[bytes] | None = None
        self.link: ch.Channel | None = None
        self.started = 0.0
        self.delay_s = _RESTART_DELAY_S
        # Scrapes waiting for this reader's metrics, oldest first: it answers each
        # COLLECT once, in order, so replies pair with these (concurrent scrapes too).
        self.waiting: deque[asyncio.Future[Any]] = deque()
        # Its latest metrics, given to a scrape it does not answer in time.
        self.last_samples: Any = None


class Workers:
    """Reader processes 1..count-1 beside this (primary) process."""

    def __init__(self, lane: FastLane, settings: Any, store_config: Any, store: Any,
                 port: int, processes: int) -> None:
        self.lane = lane
        self.settings = settings
        self.store_config = store_config
        self.port = port
        self.readers = [_Reader(number) for number in range(1, processes)]
        self.handed_on = 0  # connections the readers passed here
        self.restarts = 0
        # The summed metrics of reader processes that have ended (their last numbers).
        self._retired: Samples = []
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        directory = replica_dir(store_config.data_dir)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        # Bumped after every index write: readers catch up when it moves.
        self.generation = Generation(os.path.join(directory, "generation"), create=True)
        store.kv.after_write = self.generation.bump
        self._store = store

    # ----- starting and watching ---------------------------------------------------
    def start(self) -> None:
        for reader in self.readers:
            self._spawn(reader)
        self._watch = self._loop.create_task(self._watch_readers())

    def _spawn(self, reader: _Reader) -> None:
        level = logging.getLogger().getEffectiveLevel()
        config = pickle.dumps((self.settings, self.store_config, self.settings.host,
                               self.port, reader.number, level))
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        writes_mine, writes_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "petrel_gateway.worker", str(theirs.fileno()),
                 str(writes_theirs.fileno())],
                stdin=subprocess.PIPE, pass_fds=[theirs.fileno(), writes_theirs.fileno()])
            assert process.stdin is not None
            try:
                process.stdin.write(config)
                process.stdin.close()
            except OSError:
                process.kill()
                process.wait()
                raise
        except OSError as exc:
            mine.close()
            writes_mine.close()
            log.error("reader %d could not start: %s", reader.number, exc)
            return
        finally:
            theirs.close()
            writes_theirs.close()
        reader.process, reader.link, reader.started = process, ch.Channel(mine), \
            time.monotonic()
        # The reader's small PUTs, stored here (petrel_gateway.writes); the link ends
        # with the reader.
        writes = self._loop.create_task(self._loop.create_unix_connection(
            lambda: WriteServer(self._store), sock=writes_mine))
        writes.add_done_callback(_log_link_failure)
        threading.Thread(target=self._listen, args=(reader, reader.link),
                         name=f"petrel-reader-{reader.number}", daemon=True).start()

    async def _watch_readers(self) -> None:
        """Start a reader again when it dies (backing off while it keeps dying)."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for reader in self.readers:
                process = reader.process
                if self._stopping or process is None or process.poll() is None:
                    continue
                lived_s = time.monotonic() - reader.started
                log.error("reader %d (pid %d) exited with %s after %.0f s; starting it "
                          "again in %.1f s", reader.number, process.pid, process.returncode,
                          lived_s, reader.delay_s)
                reader.process = None
                reader.waiting.clear()  # its scrapes time out; the next process starts afresh
                if reader.last_samples is not None:
                    # What it counted stays in the sums: without it they would drop, a
                    # counter reset to Prometheus, whose rate() then counts every other
                    # process's whole total as new.
                    self._retired = add_samples(self._retired, reader.last_samples)
                    reader.last_samples = None
                if reader.link is not None:
                    reader.link.close()
                    reader.link = None
                await asyncio.sleep(reader.delay_s)
                reader.delay_s = _RESTART_DELAY_S if lived_s > _STABLE_S else \
                    min(reader.delay_s * 2, _RESTART_DELAY_S_MAX)
                if not self._stopping:
                    self.restarts += 1
                    self._spawn(reader)

    # ----- the channels ------------------------------------------------------------
    def _listen(self, reader: _Reader, link: ch.Channel) -> None:
        """One reader's channel, read in a thread until it ends."""
        while True:
            try:
                kind, payload, fd = link.receive()
            except ch.ChannelClosed:
                return
            try:
                if kind == ch.HAND_OVER and fd is not None:
                    self._loop.call_soon_threadsafe(self._adopt, fd, payload)
                    fd = None
                elif kind == ch.SAMPLES:
                    self._loop.call_soon_threadsafe(self._got_samples, reader, link,
                                                    pickle.loads(payload))
                elif kind == ch.TOUCHED:
                    touch = getattr(self._store.backend, "touch", None)  # a CachedBackend's
                    if touch is not None:
                        blocks, hits = pickle.loads(payload)
                        touch(blocks, hits)
            except RuntimeError:  # the loop is closed: the gateway is stopping
                return
            finally:
                if fd is not None:
                    os.close(fd)

    def _adopt(self, fd: int, received: bytes) -> None:
        self.handed_on += 1
        sock = socket.socket(fileno=fd)
        task = self._loop.create_task(self.lane.adopt(sock, received))
        task.add_done_callback(_log_failure)

    def _got_samples(self, reader: _Reader, link: ch.Channel, samples: Any) -> None:
        if link is not reader.link:
            return  # from a process that has ended since (its last numbers are retired)
        reader.last_samples = samples
        if reader.waiting:
            waiting = reader.waiting.popleft()
            if not waiting.done():  # not given up on by its scrape
                waiting.set_result(samples)

    async def samples(self) -> list[Any]:
        """Every reader's request metrics (petrel_gateway.metrics.Metrics.samples), and
        those of readers that have ended. A reader that does not answer within
        _COLLECT_TIMEOUT_S (busy, stopped) counts with the numbers of its last answer:
        left out, its counters would drop from the sums for one scrape and come back in
        the next, which Prometheus takes for a counter reset (a spike in every rate)."""
        waits: list[tuple[_Reader, asyncio.Future[Any]]] = []
        for reader in self.readers:
            if reader.link is None:
                continue
            waiting = self._loop.create_future()
            try:
                reader.link.send(ch.COLLECT)
            except ch.ChannelClosed:
                continue
            reader.waiting.append(waiting)
            waits.append((reader, waiting))
        answers = [self._retired] if self._retired else []
        if not waits:
            return answers
        done, _ = await asyncio.wait([waiting for _, waiting in waits],
                                     timeout=_COLLECT_TIMEOUT_S)
        for reader, waiting in waits:
            if waiting in done:
                answers.append(waiting.result())
            elif reader.last_samples is not None:
                answers.append(reader.last_samples)
        return answers

    def reconfigure(self, settings: Any) -> None:
        """Pass reloaded settings (key pairs, QoS limits) on to every reader."""
        self.settings = settings
        payload = pickle.dumps(settings)
        for reader in self.readers:
            if reader.link is not None:
                with contextlib.suppress(ch.ChannelClosed):
                    reader.link.send(ch.SETTINGS, payload)

    # ----- stopping ----------------------------------------------------------------
    async def stop(self, timeout_s: float) -> None:
        """SIGTERM every reader (each drains its requests; new ones come here
        meanwhile), wait up to `timeout_s`, then SIGKILL what is left."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        running = [r.process for r in self.readers
                   if r.process is not None and r.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for process in running:
            if process.poll() is None:
                log.error("reader pid %d did not stop in %.0f s; killing it", process.pid,
                          timeout_s)
                process.kill()
                process.wait()
        for reader in self.readers:
            if reader.link is not None:
                reader.link.close()
                reader.link = None

    def counts(self) -> tuple[int, int, int]:
        """(readers running, connections passed on, restarts): for /metrics."""
        return len(self.pids()), self.handed_on, self.restarts

    def pids(self) -> list[int]:
        return [r.process.pid for r in self.readers
                if r.process is not None and r.process.poll() is None]


def _log_link_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a reader's write link could not be set up: %s", task.exception())


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a connection passed on by a reader could not be taken: %s",
                    task.exception())
