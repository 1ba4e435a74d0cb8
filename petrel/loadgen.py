"""The load generator behind `petrel bench --qps`: any S3 endpoint, petrel or not.

How load is generated (so the generator is not what is measured):
- `processes` worker processes (spawned), each running one uvloop event loop;
- `connections` keep-alive HTTP/1.1 connections in all, split over the processes, each
  a closed loop (send a request, read the whole answer, send the next);
- a minimal HTTP/1.1 client written for this (request line and headers formatted once
  per request, the answer's length read from Content-Length or chunked framing): no
  client library per request;
- object requests use presigned URLs (SigV4 in the query, signed once per key and
  method and reused), so a request costs no signing; batch requests are signed per
  request (their body differs).

Each worker records every measured request's latency (a float array: exact
percentiles, 8 bytes per request) and counts errors by kind; once a second it reports
its counters for the live line. Requests of the warm-up period are sent but not
recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import queue
import random
import re
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import urlsplit

from petrel import sigv4, wire
from petrel.errors import MalformedBatch

DEFAULT_REGION = "us-east-1"
REQUEST_TIMEOUT_S = 30.0
PRESIGN_EXPIRES_S = 6 * 3600
_HEAD_BYTES_MAX = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


class Mode(StrEnum):
    GET = "get"
    PUT = "put"
    MIXED = "mixed"
    BATCH_GET = "batch-get"
    BATCH_PUT = "batch-put"
    LIST = "list"
    DELETE = "delete"  # cleanup


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and who signs them."""

    endpoint: str  # http://host:port
    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"endpoint must be http://HOST[:PORT], not {self.endpoint!r}")
        return parts.hostname, parts.port or 80

    @property
    def host_header(self) -> str:
        return urlsplit(self.endpoint).netloc


@dataclass(frozen=True, slots=True)
class Plan:
    """One phase of load: what every connection does, and when it stops."""

    mode: Mode
    bucket: str
    prefix: str
    objects: int
    size_min: int
    size_max: int
    connections: int
    processes: int
    duration_s: float | None = None  # stop after this long (measured part) ...
    ops: int | None = None  # ... or after this many requests in all
    warmup_s: float = 0.0
    get_fraction: float = 0.9  # MIXED
    batch_size: int = 100  # BATCH_*
    sequential: bool = False  # each key exactly once, in order (prepare, cleanup) ...
    shuffled: bool = False  # ... or each key exactly once, in a seeded random order
    seed: int = 1

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.ops is None):
            raise ValueError("a plan stops after a duration or a number of operations")
        if self.connections < self.processes or self.processes < 1:
            raise ValueError("need at least one connection per process")
        if not 0 <= self.size_min <= self.size_max:
            raise ValueError("object size range is empty")
        if self.objects < 1 or self.batch_size < 1:
            raise ValueError("objects and batch size must be at least 1")

    def key(self, index: int) -> str:
        return f"{self.prefix}{index:08d}"

    def size(self, index: int) -> int:
        if self.size_min == self.size_max:
            return self.size_min
        return random.Random(self.seed * 1_000_003 + index).randint(self.size_min,
                                                                    self.size_max)


@dataclass(slots=True)
class Tally:
    """What one process (or, merged, the whole run) measured."""

    requests: int = 0  # every request sent, warm-up included
    ops: int = 0  # measured requests
    objects: int = 0  # measured objects moved (batch requests move many)
    bytes: int = 0  # measured payload bytes sent or received
    errors: Counter[str] = field(default_factory=Counter)  # by kind, measured or not
    latencies: array[float] = field(default_factory=lambda: array("d"))
    elapsed_s: float = 0.0  # length of the measured window

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.ops += other.ops
        self.objects += other.objects
        self.bytes += other.bytes
        self.errors.update(other.errors)
        self.latencies.extend(other.latencies)
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)


class RequestFailed(Exception):
    """A request that got no usable answer; `kind` names it for the error table."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


# ----- a minimal HTTP/1.1 client ----------------------------------------------------
class Connection:
    def __init__(self, host: str, port: int, host_header: str) -> None:
        self._host, self._port = host, port
        self._host_line = b"Host: " + host_header.encode() + b"\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._exchange(method, target, headers, body)
        except TimeoutError:
            self.close()
            raise RequestFailed("timeout") from None
        except (ConnectionError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            self.close()
            kind = "connection-refused" if isinstance(exc, ConnectionRefusedError) \
                else "connection-" + type(exc).__name__
            raise RequestFailed(kind) from None

    async def _exchange(self, method: str, target: str, headers: dict[str, str] | None,
                        body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=_HEAD_BYTES_MAX)
        reader, writer = self._reader, self._writer
        assert reader is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()
                        if k.lower() != "host")
        writer.write(b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n" % (
            method.encode(), target.encode(), self._host_line, extra.encode(), len(body)))
        if body:
            writer.write(body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        if method == "HEAD" or status in (204, 304):
            payload = b""
        elif (match := _CONTENT_LENGTH.search(head)) is not None:
            payload = await reader.readexactly(int(match.group(1)))
        elif _CHUNKED.search(head):
            payload = await _read_chunked(reader)
        else:
            payload = await reader.read()
            self.close()
        if _CLOSE.search(head):
            self.close()
        return status, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    pieces: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return b"".join(pieces)
        pieces.append(await reader.readexactly(size))
        await reader.readexactly(2)


# ----- one worker process -----------------------------------------------------------
class _Worker:
    def __init__(self, target: Target, plan: Plan, index: int, start_at: float,
                 report: Callable[[tuple[int, int, int, int]], None]) -> None:
        self.target, self.plan, self.index = target, plan, index
        self.signer = sigv4.Signer(target.access_key, target.secret_key, target.region)
        self.host_header = target.host_header
        self.start_at = start_at
        self.measure_from = start_at + plan.warmup_s
        self.stop_at = None if plan.duration_s is None else self.measure_from + plan.duration_s
        share, extra = divmod(plan.ops, plan.processes) if plan.ops is not None else (0, 0)
        self.ops_left = None if plan.ops is None else share + (index < extra)
        self.connections = plan.connections // plan.processes + \
            (index < plan.connections % plan.processes)
        self.tally = Tally()
        self.random = random.Random(plan.seed * 7919 + index)
        self.next_sequential = index  # sequential plans: keys index, index + P, ...
        self.order: list[int] | None = None
        if plan.sequential and plan.shuffled:
            self.order = list(range(plan.objects))
            random.Random(plan.seed).shuffle(self.order)  # the same in every worker
        self.presigned: dict[tuple[str, int], str] = {}
        self.payload = os.urandom(max(plan.size_max, 1) + 4096)
        self.report = report
        self.last_report = (0, 0, 0, 0)

    # --- what one operation is
    def _take(self) -> bool:
        """Claim one more request; False when the plan is done."""
        if self.ops_left is not None:
            if self.ops_left <= 0:
                return False
            self.ops_left -= 1
            return True
        assert self.stop_at is not None
        return time.time() < self.stop_at

    def _next_index(self) -> int | None:
        if self.plan.sequential:
            index = self.next_sequential
            if index >= self.plan.objects:
                return None
            self.next_sequential += self.plan.processes
            return index if self.order is None else self.order[index]
        return self.random.randrange(self.plan.objects)

    def _object_target(self, method: str, index: int) -> str:
        cached = self.presigned.get((method, index))
        if cached is None:
            path = sigv4.encode_path(f"/{self.plan.bucket}/{self.plan.key(index)}")
            query = self.signer.presign(method, self.host_header, path,
                                        expires_s=PRESIGN_EXPIRES_S)
            cached = self.presigned[(method, index)] = f"{path}?{query}"
        return cached

    def _data(self, index: int) -> bytes:
        size = self.plan.size(index)
        offset = (index * 7919) % 4096
        return self.payload[offset : offset + size]

    async def _one(self, connection: Connection) -> tuple[int, int] | None:
        """One request: (objects, payload bytes), or None when there is nothing left
        to do (a sequential plan ran out of keys). Raises RequestFailed."""
        mode = self.plan.mode
        if mode is Mode.MIXED:
            mode = Mode.GET if self.random.random() < self.plan.get_fraction else Mode.PUT
        if mode in (Mode.BATCH_GET, Mode.BATCH_PUT):
            return await self._batch(connection, mode)
        if mode is Mode.LIST:
            return await self._list(connection)
        index = self._next_index()
        if index is None:
            return None
        if mode is Mode.GET:
            status, body = await connection.request("GET", self._object_target("GET", index))
            _expect(status, 200)
            if len(body) != self.plan.size(index):
                raise RequestFailed("short-read")
            return 1, len(body)
        if mode is Mode.PUT:
            data = self._data(index)
            status, _ = await connection.request("PUT", self._object_target("PUT", index),
                                                 body=data)
            _expect(status, 200)
            return 1, len(data)
        status, _ = await connection.request("DELETE", self._object_target("DELETE", index))
        _expect(status, 204)
        return 1, 0

    async def _list(self, connection: Connection) -> tuple[int, int]:
        key = ("LIST", 0)
        target = self.presigned.get(key)
        if target is None:
            path = sigv4.encode_path(f"/{self.plan.bucket}")
            query = sigv4.encode_query((("list-type", "2"), ("max-keys", "1000"),
                                        ("prefix", self.plan.prefix)))
            signed = self.signer.presign("GET", self.host_header, path, query,
                                         expires_s=PRESIGN_EXPIRES_S)
            target = self.presigned[key] = f"{path}?{signed}"
        status, body = await connection.request("GET", target)
        _expect(status, 200)
        return body.count(b"<Key>"), len(body)

    async def _batch(self, connection: Connection, mode: Mode) -> tuple[int, int] | None:
        indexes: list[int] = []
        for _ in range(self.plan.batch_size):
            index = self._next_index()
            if index is None:
                break
            indexes.append(index)
        if not indexes:
            return None
        path = sigv4.encode_path(f"/{self.plan.bucket}")
        if mode is Mode.BATCH_GET:
            query = "batch-get"
            body = wire.encode_get_request((self.plan.key(i), None) for i in indexes)
            payload_hash = hashlib.sha256(body).hexdigest()
        else:
            query = "batch-put"
            body = wire.encode_put_request((self.plan.key(i), self._data(i), "")
                                           for i in indexes)
            payload_hash = sigv4.UNSIGNED_PAYLOAD
        headers = self.signer.sign("POST", path, query, {
            "Host": self.host_header, "Content-Type": wire.CONTENT_TYPE}, payload_hash)
        status, answer = await connection.request("POST", f"{path}?{query}", headers, body)
        _expect(status, 200)
        kind = wire.Kind.GET_RESPONSE if mode is Mode.BATCH_GET else wire.Kind.PUT_RESPONSE
        try:
            frames = wire.decode(answer, kind)
        except MalformedBatch:
            raise RequestFailed("malformed-batch") from None
        if any(f.status is not wire.Status.OK for f in frames):
            raise RequestFailed("batch-item-failed")
        moved = sum(len(f.data) for f in frames) if mode is Mode.BATCH_GET \
            else len(body)
        return len(frames), moved

    # --- the loops
    async def _connection_loop(self) -> None:
        host, port = self.target.host_port
        connection = Connection(host, port, self.host_header)
        tally = self.tally
        try:
            while self._take():
                started = time.time()
                measured = started >= self.measure_from
                tally.requests += 1
                try:
                    done = await self._one(connection)
                except RequestFailed as failure:
                    tally.errors[failure.kind] += 1
                    if failure.kind.startswith("connection"):
                        await asyncio.sleep(0.01)  # do not spin on a dead endpoint
                    continue
                if done is None:
                    tally.requests -= 1
                    return
                if measured:
                    tally.latencies.append(time.time() - started)
                    tally.ops += 1
                    tally.objects += done[0]
                    tally.bytes += done[1]
        finally:
            connection.close()

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._send_report()

    def _send_report(self) -> None:
        now = (self.tally.ops, self.tally.objects, self.tally.bytes,
               sum(self.tally.errors.values()))
        self.report(tuple(a - b for a, b in zip(now, self.last_report, strict=True)))  # type: ignore[arg-type]
        self.last_report = now

    async def run(self) -> Tally:
        await asyncio.sleep(max(0.0, self.start_at - time.time()))
        reporter = asyncio.create_task(self._reporter())
        began = time.time()
        try:
            await asyncio.gather(*(self._connection_loop() for _ in range(self.connections)))
        finally:
            reporter.cancel()
        self._send_report()
        self.tally.elapsed_s = time.time() - max(began, self.measure_from)
        return self.tally


def _expect(status: int, wanted: int) -> None:
    if status != wanted:
        raise RequestFailed(f"http-{status}")


def _worker_main(target: Target, plan: Plan, index: int, start_at: float,
                 results: multiprocessing.Queue[tuple[str, int, object]]) -> None:
    import uvloop

    worker = _Worker(target, plan, index, start_at,
                     lambda delta: results.put(("progress", index, delta)))
    try:
        tally = uvloop.run(worker.run())
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        raise
    results.put(("done", index, tally))


# ----- the parent -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Progress:
    elapsed_s: float
    ops_per_s: float
    objects_per_s: float
    bytes_per_s: float
    errors: int


def run_plan(target: Target, plan: Plan,
             on_progress: Callable[[Progress], None] | None = None) -> Tally:
    """Run `plan` in its worker processes; the merged tally. Raises RuntimeError if a
    worker dies."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[str, int, object]] = context.Queue()
    start_at = time.time() + 0.3 + 0.2 * plan.processes  # every worker is up by then
    workers = [context.Process(target=_worker_main, args=(target, plan, i, start_at, results),
                               name=f"petrel-bench-{i}", daemon=True)
               for i in range(plan.processes)]
    for worker in workers:
        worker.start()
    merged = Tally()
    finished: set[int] = set()
    window = [0, 0, 0, 0]
    window_started = time.time()
    try:
        while len(finished) < len(workers):
            try:
                kind, index, value = results.get(timeout=0.25)
            except queue.Empty:
                dead = [w for i, w in enumerate(workers)
                        if i not in finished and not w.is_alive() and w.exitcode != 0]
                if dead:
                    raise RuntimeError(f"load worker {dead[0].name} died "
                                       f"(exit {dead[0].exitcode})") from None
                value = None
                kind = "tick"
            if kind == "progress":
                assert isinstance(value, tuple)
                window = [a + b for a, b in zip(window, value, strict=True)]
            elif kind == "done":
                assert isinstance(value, Tally)
                merged.merge(value)
                finished.add(index)
            elif kind == "failed":
                raise RuntimeError(f"load worker {index} failed: {value}")
            now = time.time()
            if on_progress is not None and now - window_started >= 1.0:
                span = now - window_started
                on_progress(Progress(now - start_at, window[0] / span, window[1] / span,
                                     window[2] / span, window[3]))
                window = [0, 0, 0, 0]
                window_started = now
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return merged


# ----- setup and cleanup -------------------------------------------------------------
def sequential(target: Target, plan: Plan, mode: Mode) -> None:
    """Every key of `plan` once, in order: write them (PUT) or remove them (DELETE).
    Raises RuntimeError if any request failed."""
    phase = replace(plan, mode=mode, sequential=True, duration_s=None, ops=plan.objects,
                    warmup_s=0.0)
    tally = run_plan(target, phase)
    failed = sum(tally.errors.values())
    if failed:
        kinds = ", ".join(f"{k} x{n}" for k, n in tally.errors.most_common())
        raise RuntimeError(f"{mode.value} of the bench objects failed {failed} times ({kinds})")


def signed_request(target: Target, method: str, path: str, query: str = "") -> tuple[int, bytes]:
    """One signed request without a body on a fresh connection: (status, body)."""
    signer = sigv4.Signer(target.access_key, target.secret_key, target.region)
    raw_path = sigv4.encode_path(path)
    headers = signer.sign(method, raw_path, query, {"Host": target.host_header},
                          hashlib.sha256(b"").hexdigest())

    async def once() -> tuple[int, bytes]:
        host, port = target.host_port
        connection = Connection(host, port, target.host_header)
        try:
            return await connection.request(method, raw_path + (f"?{query}" if query else ""),
                                            headers)
        finally:
            connection.close()

    return asyncio.run(once())


def ensure_bucket(target: Target, bucket: str) -> bool:
    """Create the bucket; True if this run created it."""
    status, body = signed_request(target, "PUT", f"/{bucket}")
    if status == 200:
        return True
    if status == 409 and (b"BucketAlreadyOwnedByYou" in body or b"BucketAlreadyExists" in body):
        return False
    raise RuntimeError(f"cannot create bucket {bucket}: HTTP {status} "
                       f"{body[:300].decode('utf-8', 'replace')}")


def delete_bucket(target: Target, bucket: str) -> None:
    status, _ = signed_request(target, "DELETE", f"/{bucket}")
    if status not in (204, 200):
        raise RuntimeError(f"cannot delete bucket {bucket}: HTTP {status}")


def percentile(sorted_values: array[float] | list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(fraction * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]
