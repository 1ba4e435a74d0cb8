"""The fast lane: GetObject, HeadObject and PutObject of packed objects, and batch gets
answered whole, without aiohttp's per-request machinery.

Every connection starts in the lane. A request it can serve is answered from
`data_received`: one HTTP/1.1 GET, HEAD or PUT of an object with nothing pipelined
behind it, no conditional headers, nothing in the query but a presigned URL's SigV4
parameters, and for a PUT a plain body no larger than a packed object (with "Expect:
100-continue", as boto3 sends it, the lane answers 100 Continue and waits for the
body). It goes through the same steps as the full stack, with the same functions:
SigV4 (`authn.identify`), QoS admission, the index lookup, a read verified against the
record's checksum (or a body verified against its signed hash, Content-MD5 and
x-amz-checksum-* before it is stored), Range, the same response headers
(`handlers.objects.object_header_pairs`), S3 errors (`errors.as_s3_error`), request
ids and metrics. In a reader process, a PUT is stored by the primary
(petrel_gateway.writes).

Anything else is handed to aiohttp's protocol with every byte received so far, and the
connection stays with aiohttp from then on: aws-chunked uploads, copies, multipart,
bucket and service operations, query sub-resources, pipelined requests, large objects,
and new requests while the gateway drains for shutdown. Reads that must wait on the disk
or the backend, and every write, finish in a task; the connection takes no other
request meanwhile.

Why: of the ~300 us of CPU a 10 KiB GET cost through aiohttp's web stack on one core,
about half was aiohttp's request and response objects, middleware and router; small
objects are what training jobs read and write most (bench/results/s3-profile-*.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from petrel import wire
from petrel.batchread import read_batch
from petrel.errors import NotServedHere, PetrelError, RequestTimeout
from petrel.format import FLAG_LARGE
from petrel.model import ByteRange
from petrel.replica import Replica
from petrel.store import Located, Store
from petrel_gateway import xml
from petrel_gateway.app import INFLIGHT, METRICS, REQUEST_IDS
from petrel_gateway.auth import AuthResult
from petrel_gateway.authn import VERIFIER, identify
from petrel_gateway.chunked import open_body
from petrel_gateway.context import QOS, SETTINGS, STORE
from petrel_gateway.errors import as_s3_error
from petrel_gateway.handlers import batch
from petrel_gateway.handlers.objects import object_header_pairs
from petrel_gateway.request import parse_range, target_of, user_metadata
from petrel_gateway.writes import WriteOutcomeUnknown

log = logging.getLogger("petrel.gateway")

# A request head longer than this goes to aiohttp (which enforces the real limits).
_HEAD_BYTES_MAX = 8 * 1024
# Header lines as RFC 9110 has them (a token, a colon, visible characters, spaces and
# tabs), each ending CRLF; obsolete line folding and control characters go to aiohttp.
_HEADER_BLOCK = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t]*\r\n)*")
# Query parameters of a presigned GetObject (and botocore's x-id); any other parameter
# is a sub-resource or an override the full stack handles.
_LANE_QUERY = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                         "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature", "x-id"})
# Headers whose presence sends a request to the full stack: a body, a protocol switch,
# a connection that is not kept alive, conditional requests.
_FULL_STACK_HEADERS = frozenset({"transfer-encoding", "upgrade", "te",
                                 "if-match", "if-none-match", "if-modified-since",
                                 "if-unmodified-since"})
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed",
            416: "Requested Range Not Satisfiable", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}
_HAND_OVER = object()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How often connections are checked for idle time and stalled bodies.
_SWEEP_S = 0.5
# Bytes a client may send ahead while its request is being answered; then the lane
# stops reading from it until the answer is written.
_PENDING_BYTES_MAX = 1024 * 1024
_LANE_METHODS = frozenset({"GET", "HEAD", "PUT", "POST"})
_OPERATIONS = {"GET": "get_object", "HEAD": "head_object", "PUT": "put_object",
               "POST": "batch_get_objects"}
_BATCH_GET_QUERIES = frozenset({"batch-get", "batch-get="})


class _Request:
    __slots__ = ("body", "body_length", "headers", "method", "path", "query", "raw")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str],
                 body: bytes, body_length: int, raw: bytes) -> None:
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body, self.body_length = body, body_length
        self.raw = raw  # the bytes it came in: what a reader hands on if it must

    @property
    def complete(self) -> bool:
        return len(self.body) == self.body_length


def parse_head(data: bytes, body_bytes_max: int, batch_bytes_max: int = 0
               ) -> _Request | None:
    """The request at the start of `data` if it is one the lane serves, with the part
    of its body that `data` holds (a PUT's or POST's body may be incomplete: see
    `complete`); None for anything else, and for bytes beyond the request (the full
    stack then parses it all, and answers what is malformed). A batch get (POST
    ?batch-get) is one only when `batch_bytes_max` (its largest body) is given (0: batch
    gets off in this lane). Header names come back lower-cased, values without
    surrounding blanks."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > _HEAD_BYTES_MAX:
        return None
    try:
        text = data[: end + 2].decode("ascii")
    except UnicodeDecodeError:
        return None
    line_end = text.find("\r\n")
    request_line = text[:line_end].split(" ")
    if len(request_line) != 3 or not _HEADER_BLOCK.fullmatch(text, line_end + 2):
        return None
    method, target, version = request_line
    if method not in _LANE_METHODS or version != "HTTP/1.1" or target[:1] != "/" \
            or "#" in target or not target.isprintable() or \
            (method == "POST" and not batch_bytes_max):
        return None
    headers: dict[str, str] = {}
    for line in text[line_end + 2 : -2].split("\r\n"):
        name, _, value = line.partition(":")
        name = name.lower()
        if name in headers or name in _FULL_STACK_HEADERS:
            return None
        headers[name] = value.strip(" \t")
    if "host" not in headers or \
            headers.get("connection", "keep-alive").lower() != "keep-alive":
        return None
    expect = headers.get("expect")
    if expect is not None and (method != "PUT" or expect.lower() != "100-continue"):
        return None  # boto3 sends "Expect: 100-continue" with every PutObject
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit() and len(length) < 16):
        return None
    body_length = int(length)
    if method == "PUT" or method == "POST":
        # A plain body of a packed object (or a batch get request): aws-chunked
        # bodies, copies and large objects go to the full stack.
        if body_length > (body_bytes_max if method == "PUT" else batch_bytes_max) or \
                "content-length" not in headers or \
                headers.get("x-amz-content-sha256", "").startswith("STREAMING-") or \
                "x-amz-copy-source" in headers or "x-amz-decoded-content-length" in headers:
            return None
    elif body_length:
        return None
    body = data[end + 4 :]
    if len(body) > body_length:
        return None  # pipelined behind it
    path, _, query = target.partition("?")
    if method == "POST":
        if query not in _BATCH_GET_QUERIES:
            return None
    elif query:
        for part in query.split("&"):
            if part.partition("=")[0] not in _LANE_QUERY:
                return None
    return _Request(method, path, query, headers, body, body_length, data)


class _DateHeader:
    """The Date header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second, self._value = -1, ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, xml.http_date(second * 1000)
        return self._value


class FastLane:
    """The protocol factory a listening socket is created with (see `FastSite`).
    `full_stack` makes aiohttp's protocol for a connection handed over."""

    def __init__(self, app: web.Application, full_stack: Callable[[], asyncio.Protocol],
                 idle_timeout_s: float,
                 pass_on: Callable[[asyncio.Transport, bytes], None] | None = None) -> None:
        self.app = app
        self.full_stack = full_stack
        # A reader process (petrel_gateway.worker): it answers GETs and HEADs from a
        # replica of the store and passes every other connection on to the primary
        # (`pass_on`), instead of handing it to its own aiohttp.
        self.pass_on = pass_on
        # A reader whose store passes small PUTs to the primary (petrel_gateway.writes)
        # takes them like the primary's lane does, instead of passing the connection on.
        self.takes_writes = False
        # Batch gets are answered in the lane, whole (up to
        # batchread.WHOLE_ANSWER_BYTES_MAX of records): parse_head takes their bodies.
        self.batch_bytes_max = batch.request_bytes_max(app[STORE].limits, with_data=False)
        self.idle_timeout_s = idle_timeout_s
        self.connections: set[_Connection] = set()
        self.served = 0  # requests answered in the lane (tests read it)
        self.handed_over = 0  # connections handed to aiohttp
        self._date = _DateHeader()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> _Connection:
        if self._sweeper is None:
            self._sweep()
        return _Connection(self)

    async def adopt(self, sock: socket.socket, received: bytes) -> None:
        """A connection a reader process passed on: served as if accepted here, with
        `received` (its bytes the reader read and did not answer) as its first data."""
        def connection() -> _Connection:
            adopted = self()
            adopted.preload = received
            return adopted

        await asyncio.get_running_loop().connect_accepted_socket(connection, sock)

    # ----- connections --------------------------------------------------------------
    def _sweep(self) -> None:
        """Close connections idle for `idle_timeout_s` (aiohttp does the same for its
        own): a silent client cannot pin a socket."""
        now = time.monotonic()
        body_idle_timeout_s = self.app[SETTINGS].body_idle_timeout_s
        for connection in list(self.connections):
            idle_s = now - connection.idle_since
            if connection.partial is not None:
                if idle_s > body_idle_timeout_s:
                    self._body_timed_out(connection)
            elif not connection.busy and idle_s > self.idle_timeout_s:
                connection.close()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    def close(self) -> None:
        """Shutdown: close the connections still in the lane (aiohttp closes those
        handed over to it)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close()

    # ----- requests -----------------------------------------------------------------
    def handle(self, connection: _Connection, data: bytes, admitted: bool = False) -> None:
        """`data` starts a request (or is all of one whose body was awaited: then
        `admitted`, since it was let in when its head arrived)."""
        request = parse_head(data, self.app[STORE].limits.pack_threshold_bytes,
                             self.batch_bytes_max)
        if request is not None and not request.complete:
            if (request.method == "PUT" and self.pass_on is not None and
                    (not self.takes_writes or self.app[QOS].config.enabled)) or \
                    not self._admit(connection):
                connection.hand_over(data)
                return
            if "expect" in request.headers:  # 100-continue: the client waits for this
                connection.send(_CONTINUE, b"")
            connection.wait_for_body(data, len(data) + request.body_length - len(request.body))
            return
        outcome = _HAND_OVER if request is None else \
            self._serve(connection, request, admitted)
        if outcome is _HAND_OVER:
            connection.hand_over(data)

    def _admit(self, connection: _Connection) -> bool:
        """Count a request whose body is still arriving as in flight, as the full stack
        does (the shutdown drain waits for it, inflight_requests_max bounds it); False
        when the full stack must answer it (draining, or at the limit: 503 SlowDown)."""
        inflight = self.app[INFLIGHT]
        if inflight.draining or inflight.count >= self.app[SETTINGS].inflight_requests_max:
            return False
        inflight.count += 1
        connection.counted = True
        return True

    def release(self, connection: _Connection) -> None:
        if connection.counted:
            connection.counted = False
            self.app[INFLIGHT].count -= 1

    def _body_timed_out(self, connection: _Connection) -> None:
        """A body that stalled for body_idle_timeout_s: RequestTimeout, then the
        connection is closed (what is left of the body is never read), nothing stored."""
        assert connection.partial is not None
        data = b"".join(connection.partial)
        connection.partial = None
        self.release(connection)
        request = parse_head(data, self.app[STORE].limits.pack_threshold_bytes,
                             self.batch_bytes_max)
        if request is not None:
            target = target_of(request.headers["host"], request.path,
                               self.app[SETTINGS].virtual_host_domains)
            self._fail(connection, request, RequestTimeout(), target.bucket or "",
                       target.key or "", self.app[REQUEST_IDS].next(),
                       _OPERATIONS[request.method], time.perf_counter())
        connection.close()

    def _serve(self, connection: _Connection, request: _Request, admitted: bool) -> object:
        """Answer `request` (or start answering it); _HAND_OVER to leave it to the full
        stack, which is decided before anything is charged or counted."""
        app = self.app
        inflight = app[INFLIGHT]
        if inflight.draining and not admitted:
            return _HAND_OVER
        if self.pass_on is not None and app[QOS].config.enabled:
            return _HAND_OVER  # QoS limits are kept by one process: the primary
        settings = app[SETTINGS]
        if len(request.headers) > settings.headers_max:
            return _HAND_OVER  # aiohttp refuses it
        try:
            target = target_of(request.headers["host"], request.path,
                               settings.virtual_host_domains)
        except UnicodeError:
            return _HAND_OVER
        bucket, key = target.bucket, target.key
        if request.method == "POST":
            if bucket is None or key is not None or bucket.startswith("_"):
                return _HAND_OVER
            return self._batch_get(connection, request, bucket, admitted)
        if bucket is None or key is None or bucket.startswith("_"):
            return _HAND_OVER  # service, bucket and /_petrel/ admin paths
        if request.method == "PUT":
            if self.pass_on is not None and not self.takes_writes:
                return _HAND_OVER  # the primary writes
            if not admitted and inflight.count >= settings.inflight_requests_max:
                return _HAND_OVER  # the full stack answers 503 SlowDown
            return self._put(connection, request, bucket, key)
        store = app[STORE]
        located: Located | None = None
        missing: PetrelError | None = None
        try:
            located = store.locate_object(bucket, key)
        except PetrelError as exc:
            missing = exc
        except NotServedHere:
            return _HAND_OVER  # a reader process: the primary reads this one
        if located is not None and located.entry.flags & FLAG_LARGE:
            return _HAND_OVER  # streamed from the backend
        started = time.perf_counter()
        request_id = app[REQUEST_IDS].next()
        operation = _OPERATIONS[request.method]
        try:
            identity = self._identify(request, request.headers, bucket, operation)
            admission = app[QOS].admit(identity.access_key_id if identity else None,
                                       bucket, 0)
        except Exception as exc:  # noqa: BLE001 - answered as S3 errors
            self._fail(connection, request, exc, bucket, key, request_id, operation, started)
            return None
        try:
            if missing is not None:
                raise missing
            assert located is not None
            byte_range = parse_range(request.headers.get("range"), located.entry.size)
            if request.method == "HEAD":
                sent = self._respond(connection, located, byte_range, None, request_id)
            else:
                try:
                    read = store.read_object_now(located, byte_range)
                except NotServedHere:
                    admission.done(0)
                    return _HAND_OVER
                if read is None:
                    self._read_later(connection, request, located, byte_range, admission,
                                     request_id, operation, started)
                    return None
                sent = self._respond(connection, located, byte_range, read, request_id)
        except Exception as exc:  # noqa: BLE001 - answered as S3 errors
            admission.done(0)
            self._fail(connection, request, exc, bucket, key, request_id, operation, started)
            return None
        admission.done(sent)
        self._count(operation, 206 if byte_range is not None else 200, started, sent)
        return None

    def _identify(self, request: _Request, headers: Mapping[str, str], bucket: str,
                  operation: str) -> AuthResult | None:
        """authn.identify, as the full stack calls it for this request."""
        return identify(self.app[VERIFIER], self.app[SETTINGS], request.method,
                        request.path, request.query, headers, _QueryNames(request.query),
                        bucket, operation, unquote(request.path))

    def _put(self, connection: _Connection, request: _Request, bucket: str,
             key: str) -> object:
        """PutObject of a packed object whose whole body is here: checked in the order
        the full stack checks (handlers/objects.put_object), the body verified against
        its signed hash, Content-MD5 and x-amz-checksum-* before it is stored."""
        app = self.app
        store = app[STORE]
        started = time.perf_counter()
        request_id = app[REQUEST_IDS].next()
        headers = CIMultiDict(request.headers)
        try:
            identity = self._identify(request, headers, bucket, "put_object")
            admission = app[QOS].admit(identity.access_key_id if identity else None,
                                       bucket, request.body_length)
        except Exception as exc:  # noqa: BLE001 - answered as S3 errors
            self._fail(connection, request, exc, bucket, key, request_id, "put_object",
                       started)
            return None
        try:
            assert identity is not None  # anonymous writes are refused by identify
            meta = user_metadata(headers, store.limits.user_metadata_bytes_max)
            store.check_put(bucket, key, meta)
            decoder = open_body(identity, headers)
            payload = decoder.feed(request.body)
            decoder.finish()
        except NotServedHere:  # a reader whose view could not catch up
            admission.done(0)
            return _HAND_OVER
        except Exception as exc:  # noqa: BLE001 - answered as S3 errors
            admission.done(0)
            self._fail(connection, request, exc, bucket, key, request_id, "put_object",
                       started)
            return None
        inflight = app[INFLIGHT]
        inflight.count += 1
        connection.busy = True

        async def finish() -> None:
            try:
                info = await store.put_object(bucket, key, payload, meta)
                connection.send(self._head(200, [("ETag", f'"{info.etag}"')], 0,
                                           request_id), b"")
                self.served += 1
                self._count("put_object", 200, started, 0, len(request.body))
            except NotServedHere:  # a reader whose primary is gone: never sent to it
                connection.hand_over_busy(request.raw)
            except WriteOutcomeUnknown:
                # The primary went while storing it: the write may have been made, so no
                # answer may say either way. The client sees the connection end, as it
                # would had the one process crashed, and retries.
                connection.abort()
            except Exception as exc:  # noqa: BLE001 - answered as S3 errors
                self._fail(connection, request, exc, bucket, key, request_id, "put_object",
                           started)
            finally:
                admission.done(0)
                inflight.count -= 1
                connection.done_waiting()

        self._start(finish())
        return None

    def _batch_get(self, connection: _Connection, request: _Request, bucket: str,
                   admitted: bool) -> object:
        """A batch get answered in the lane (handlers/batch.py streams what is not):
        checked as the full stack checks it, looked up before anything is read (what
        this process cannot answer whole goes to the full stack, a reader's to the
        primary), read in one merged plan, answered whole in one writev."""
        app = self.app
        inflight = app[INFLIGHT]
        if not admitted and inflight.count >= app[SETTINGS].inflight_requests_max:
            return _HAND_OVER  # the full stack answers 503 SlowDown
        store = cast("Store | Replica", app[STORE])
        started = time.perf_counter()
        request_id = app[REQUEST_IDS].next()
        headers = CIMultiDict(request.headers)
        try:
            identity = self._identify(request, headers, bucket, "batch_get_objects")
            if identity is None:
                return _HAND_OVER  # anonymous, of a public-read bucket: the full stack
            decoder = open_body(identity, headers)
            body = decoder.feed(request.body)
            decoder.finish()
            items = batch.get_items(body, bucket, store.limits)
            lookup = store.plan_batch(bucket, items)
        except NotServedHere:
            return _HAND_OVER
        except Exception as exc:  # noqa: BLE001 - answered as S3 errors
            self._fail(connection, request, exc, bucket, "", request_id,
                       "batch_get_objects", started)
            return None
        try:  # QoS is on only in the primary (a reader hands every request over then)
            admission = app[QOS].admit(identity.access_key_id, bucket, len(request.body))
        except Exception as exc:  # noqa: BLE001 - SlowDown, answered as an S3 error
            self._fail(connection, request, exc, bucket, "", request_id,
                       "batch_get_objects", started)
            return None
        inflight.count += 1
        connection.busy = True

        async def finish() -> None:
            sent = 0  # for QoS: the bytes of an answer handed to the socket
            try:
                results = await read_batch(store, items, lookup)
                pieces: list[bytes | memoryview] = [
                    wire.stream_header(wire.Kind.GET_RESPONSE)]
                batch.encode_results(pieces, results)
                pieces.append(wire.end_frame(len(items)))
                size = sum(len(piece) for piece in pieces)
                head = self._head(200, [("Content-Type", wire.CONTENT_TYPE)], size,
                                  request_id)
                connection.send_pieces(head, pieces)
                sent = size
                self.served += 1
                self._count("batch_get_objects", 200, started, size, len(request.body))
            except NotServedHere:  # bytes planned for went meanwhile (a cache eviction)
                connection.hand_over_busy(request.raw)
            except Exception as exc:  # noqa: BLE001 - answered as S3 errors
                self._fail(connection, request, exc, bucket, "", request_id,
                           "batch_get_objects", started)
            finally:
                admission.done(sent)
                inflight.count -= 1
                connection.done_waiting()

        self._start(finish())
        return None

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _read_later(self, connection: _Connection, request: _Request, located: Located,
                    byte_range: ByteRange | None, admission: Any, request_id: str,
                    operation: str, started: float) -> None:
        """A read that must wait (a cold or remote segment): the connection takes no
        other request until it is answered."""
        inflight = self.app[INFLIGHT]
        inflight.count += 1
        connection.busy = True

        async def finish() -> None:
            sent = 0
            try:
                stream = await self.app[STORE].read_object(located, byte_range)
                assert stream.body is not None  # packed objects are read whole
                sent = self._respond(connection, located, byte_range,
                                     (stream.body, stream.start), request_id)
                self._count(operation, 206 if byte_range is not None else 200, started,
                            sent)
            except NotServedHere:  # a reader, and the bytes went meanwhile
                connection.hand_over_busy(request.raw)
            except Exception as exc:  # noqa: BLE001 - answered as S3 errors
                self._fail(connection, request, exc, located.info.bucket, located.info.key,
                           request_id, operation, started)
            finally:
                admission.done(sent)
                inflight.count -= 1
                connection.done_waiting()

        self._start(finish())

    # ----- responses ----------------------------------------------------------------
    def _respond(self, connection: _Connection, located: Located,
                 byte_range: ByteRange | None, read: tuple[bytes, int] | None,
                 request_id: str) -> int:
        info = located.info
        headers = object_header_pairs(info)
        status, length = 200, info.size
        if byte_range is not None:
            status = 206
            start, length = (read[1], len(read[0])) if read is not None else \
                (byte_range.start, byte_range.length or 0)
            headers.append(("Content-Range", f"bytes {start}-{start + length - 1}/{info.size}"))
        body = read[0] if read is not None else b""
        connection.send(self._head(status, headers, length, request_id), body)
        self.served += 1
        return len(body)

    def _fail(self, connection: _Connection, request: _Request, exc: Exception,
              bucket: str, key: str, request_id: str, operation: str,
              started: float) -> None:
        error = as_s3_error(exc, request.method, request.path)
        resource = error.resource or f"/{bucket}/{key}"
        headers = [("Content-Type", "application/xml")]
        if error.retry_after_s is not None:
            headers.append(("Retry-After", str(error.retry_after_s)))
        if request.method == "HEAD":  # no body, and no length (as aiohttp answers)
            body, length = b"", None
        else:
            body = xml.error_xml(error.code, error.detail, resource, request_id)
            length = len(body)
        connection.send(self._head(error.status, headers, length, request_id), body)
        self.served += 1
        self._count(operation, error.status, started, len(body), len(request.body))

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None,
              request_id: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines.append(f"Date: {self._date.now()}\r\n"
                     f"Server: petrel\r\nx-amz-request-id: {request_id}\r\n"
                     f"x-amz-id-2: {request_id}\r\n\r\n")
        return "\r\n".join(lines).encode()

    def _count(self, operation: str, status: int, started: float, sent: int,
               received: int = 0) -> None:
        if METRICS in self.app:
            self.app[METRICS].observe(operation, status, time.perf_counter() - started,
                                      received, sent)


class _QueryNames:
    """The (raw) parameter names of a query string, for `in` tests only: cheaper than a
    set when a request asks two or three questions of it."""

    __slots__ = ("_query",)

    def __init__(self, query: str) -> None:
        self._query = f"&{query}&"

    def __contains__(self, name: object) -> bool:
        query = self._query
        return f"&{name}=" in query or f"&{name}&" in query




class _Connection(asyncio.Protocol):
    """One client connection while it is in the lane."""

    __slots__ = ("busy", "counted", "idle_since", "lane", "partial", "partial_bytes",
                 "partial_total", "pending", "preload", "read_paused", "transport",
                 "write_paused")

    def __init__(self, lane: FastLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.pending = b""
        # A request whose body is still arriving: its bytes so far, and how many it has.
        self.partial: list[bytes] | None = None
        self.partial_bytes = self.partial_total = 0
        self.counted = False  # counted in flight while its body arrives
        self.idle_since = time.monotonic()
        self.read_paused = self.write_paused = False
        self.preload = b""  # bytes a reader process received on an adopted connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.lane.connections.add(self)
        if self.preload:
            received, self.preload = self.preload, b""
            self.data_received(received)

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self.pending += data  # the client sent on before its answer: handled after
            if len(self.pending) > _PENDING_BYTES_MAX and self.transport is not None \
                    and not self.read_paused:
                self.read_paused = True  # resumed when the answer is written
                self.transport.pause_reading()
            return
        self.idle_since = time.monotonic()
        if self.partial is not None:
            self.partial.append(data)
            self.partial_bytes += len(data)
            if self.partial_bytes < self.partial_total:
                return
            data = b"".join(self.partial)
            self.partial = None
            admitted = self.counted
            self.lane.release(self)
            self.lane.handle(self, data, admitted)
            return
        self.lane.handle(self, data)

    def wait_for_body(self, data: bytes, total: int) -> None:
        self.partial, self.partial_bytes, self.partial_total = [data], len(data), total

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.release(self)
        self.partial = None
        self.lane.connections.discard(self)
        self.transport = None

    # Flow control: while the client does not read its answers, read no more requests.
    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def send(self, head: bytes, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # One buffer, one send: joining costs less than a second iovec.
            self.transport.write(head + body if body else head)

    def send_pieces(self, head: bytes, pieces: list[bytes | memoryview]) -> None:
        """A head and a body in pieces, in one writev (the pieces are not joined)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines([head, *pieces])

    def done_waiting(self) -> None:
        self.busy = False
        self.idle_since = time.monotonic()
        if self.read_paused and not self.write_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        pending, self.pending = self.pending, b""
        if pending and self.transport is not None:
            self.lane.handle(self, pending)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, nothing more sent (a reset for the client)."""
        if self.transport is not None:
            self.transport.abort()

    def hand_over_busy(self, data: bytes) -> None:
        """Hand over a connection whose request (`data`) is being answered and has
        written nothing yet, with whatever the client sent behind it."""
        pending, self.pending = self.pending, b""
        self.hand_over(data + pending)

    def hand_over(self, data: bytes) -> None:
        """From now on aiohttp's protocol owns this connection; `data` (everything
        received and not answered) is fed to it as if it had just arrived."""
        transport = self.transport
        self.lane.release(self)
        self.lane.connections.discard(self)
        self.transport = None
        if transport is None or transport.is_closing():
            return
        if self.lane.pass_on is not None:  # counted by the primary, which takes it
            transport.pause_reading()
            self.lane.pass_on(transport, data)
            return
        self.lane.handed_over += 1
        protocol = self.lane.full_stack()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.write_paused:
            protocol.pause_writing()
        if self.read_paused:
            transport.resume_reading()
        if data:
            protocol.data_received(data)


class FastSite(web.TCPSite):
    """aiohttp's TCP site with the fast lane in front of aiohttp's protocol."""

    __slots__ = ("lane",)

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 idle_timeout_s: float, ssl_context: Any = None,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        assert runner.server is not None
        self.lane = FastLane(runner.app, runner.server, idle_timeout_s)
        if METRICS in runner.app:
            lane = self.lane
            runner.app[METRICS].watch_fast_lane(lambda: (lane.served, lane.handed_over))

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.lane, self._host, self._port,
                                                ssl=self._ssl_context,
                                                backlog=self._backlog,
                                                reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose for port 0)."""
        return self._bound_port if self._bound_port is not None else self._port

    async def stop(self) -> None:
        await super().stop()
        self.lane.close()
