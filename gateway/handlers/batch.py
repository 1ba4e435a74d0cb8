"""petrel's batch API on the bucket URL: BatchGetObjects (`POST /bucket?batch-get`) and
BatchPutObjects (`POST /bucket?batch-put`). Bodies in both directions are petrel batch
streams (petrel/wire.py, docs/wire.md).

Most batch gets never reach this handler: the fast lane (petrel_gateway.fastlane)
answers those it can hold whole, in every serving process. This one answers the rest:
answers to stream, batches holding a large object, anonymous ones (of a public-read
bucket), and whatever else the lane hands over (a head that arrived in pieces, a
gateway draining for shutdown or at its in-flight limit).

A batch get answers 200 with one frame per requested key, in request order, read in
windows of keys; a key that is missing or fails (a range past the end, a corrupt record)
gets its own NOT_FOUND or ERROR frame and the stream goes on. An answer that fits
RESPONSE_BUFFER_BYTES is sent whole once read, with a Content-Length, its frames handed
to the socket unjoined (one writev); a longer one is streamed (chunked). A failure of
the whole request before the first byte is sent is an ordinary S3 error; after it (the
store closing under a streamed answer) it cuts the connection before the END frame, so
the client sees a truncated stream, never a short batch.

A batch put decodes and checks the whole body first (every frame's checksum), then
appends every object as one group with one durable commit.
"""

from __future__ import annotations

import logging

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from petrel import batchread, wire
from petrel.errors import MalformedBatch, NoSuchKey, PetrelError, TooManyItems
from petrel.format import ObjectMeta
from petrel.limits import Limits
from petrel.model import ByteRange, GetItem, GetResult, ObjectInfo, PutItem
from petrel_gateway.handlers.base import Call

log = logging.getLogger("petrel.gateway")

# Keys read per engine call while answering a batch get: one index multi-get and one
# merged read plan per window. Bounds the bytes read at once (a window of 1 MiB packed
# objects is 64 MiB) while keeping neighbouring reads mergeable.
WINDOW_ITEMS = 64
# Payload bytes gathered before a batch get answer starts. An answer that fits (1000
# objects of 16 KiB) goes out whole, headers included, in one writev with a
# Content-Length: a write per window costs a system call and a wake-up of the reader
# each, and a client reads a body with a length into one buffer, where a chunked one
# arrives in pieces. A longer answer is streamed in joined writes of about this size.
# Held per request: at most this plus one window (plus one joined copy when streamed).
RESPONSE_BUFFER_BYTES = 16 * 1024 * 1024


def request_bytes_max(limits: Limits, with_data: bool) -> int:
    """The largest well-formed request body: every item at its limits."""
    per_item = wire.FRAME_HEADER_BYTES + limits.key_bytes_max + \
        max(16, limits.content_type_bytes_max)
    framing = wire.STREAM_HEADER_BYTES + limits.batch_items_max * per_item + 64
    return framing + (limits.batch_bytes_max if with_data else 0)


def _decode(body: bytes, kind: wire.Kind, call: Call) -> list[wire.Frame]:
    items_max = call.store.limits.batch_items_max
    frames = wire.decode(body, kind, items_max=items_max + 1)
    if len(frames) > items_max:
        raise TooManyItems(f"at most {items_max} items per batch")
    return frames


def _stream_response() -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": wire.CONTENT_TYPE})
    response.enable_chunked_encoding()
    return response


async def batch_get_objects(call: Call) -> web.StreamResponse:
    body = await call.read_body(request_bytes_max(call.store.limits, with_data=False))
    items = get_items(body, call.bucket, call.store.limits)
    call.store.head_bucket(call.bucket)  # a missing bucket fails the whole request
    # Frames not sent yet, joined once per write: each payload is copied once here.
    pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
    held = 0
    response: web.StreamResponse | None = None
    try:
        for start in range(0, len(items), WINDOW_ITEMS):
            window = await call.store.get_objects(items[start : start + WINDOW_ITEMS])
            held += encode_results(pieces, window)
            if held >= RESPONSE_BUFFER_BYTES and start + WINDOW_ITEMS < len(items):
                if response is None:
                    response = _stream_response()
                    await response.prepare(call.request)
                await response.write(b"".join(pieces))
                pieces, held = [], 0
        pieces.append(wire.end_frame(len(items)))
        if response is None:
            # Nothing sent yet: a failure above was still an ordinary S3 error answer.
            answer = _Pieces(pieces)
            # Declared here, not left to aiohttp: the metrics count a response's
            # Content-Length before it is sent.
            return web.Response(status=200, body=answer,
                                headers={"Content-Length": str(answer.size)})
        await response.write_eof(b"".join(pieces))
    except (ConnectionError, PetrelError) as exc:
        if response is None:
            raise
        # Headers are sent: no S3 error can be rendered any more. Cut the connection
        # before the END frame so the client knows the batch is incomplete.
        log.warning("batch get on %s cut after the response started: %s", call.bucket, exc)
        if call.request.transport is not None:
            call.request.transport.close()
    return response


async def batch_locate_objects(call: Call) -> web.Response:
    """Where each key's record lies in a local segment file, for a client on this
    machine that reads the bytes itself (short-circuit reads, petrel.shortcircuit,
    docs/wire.md): the segment files, then per key in request order LOCATED (file,
    offset, length, checksum), NOT_FOUND, or FETCH (a remote segment, a large object,
    an error: the client asks a batch get). No record is read."""
    body = await call.read_body(request_bytes_max(call.store.limits, with_data=False))
    wanted = requested_items(body, call.store.limits)
    files, locations = batchread.locate(call.store, call.bucket, wanted)
    return web.Response(status=200, body=wire.encode_locate_response(files, locations),
                        headers={"Content-Type": wire.CONTENT_TYPE})


class _Pieces(payload.Payload):
    """A response body held as the pieces of a batch stream (frame headers and the
    payloads read), written with one writev-style `writelines` instead of joined: a join
    copies the whole answer once more into freshly mapped pages, and aiohttp joins the
    headers with a body again before it writes (on this Python it never uses
    writelines), which costs as much as reading the objects did."""

    _autoclose = True  # memory only

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        super().__init__(pieces, content_type=wire.CONTENT_TYPE)
        self._size = sum(len(piece) for piece in pieces)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        pieces: list[bytes | memoryview] = self._value
        # The first write sends the response headers aiohttp holds back, joined with
        # the (small) stream header; the rest go straight to the transport in order.
        await writer.write(pieces[0])
        transport = getattr(writer, "transport", None)  # aiohttp's StreamWriter's
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.writelines(pieces[1:])
        await writer.drain()

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        assert content_length is None or content_length == self._size
        await self.write(writer)


def requested_items(body: bytes, limits: Limits
                    ) -> list[tuple[str, tuple[int, int | None] | None]]:
    """The (key, byte range) items of a GET_REQUEST body (batch get, batch locate).
    Raises MalformedBatch, TooManyItems."""
    items_max = limits.batch_items_max
    wanted = wire.decode_get_request(body, items_max=items_max + 1)
    if len(wanted) > items_max:
        raise TooManyItems(f"at most {items_max} items per batch")
    return wanted


def get_items(body: bytes, bucket: str, limits: Limits) -> list[GetItem]:
    """The items of a batch get request body. Raises MalformedBatch, TooManyItems."""
    return [GetItem(bucket, key, None) if byte_range is None
            else GetItem(bucket, key, ByteRange(byte_range[0], byte_range[1]))
            for key, byte_range in requested_items(body, limits)]


def encode_results(pieces: list[bytes | memoryview], results: list[GetResult]) -> int:
    """Append one frame per result to `pieces`, in order; returns the payload bytes
    added."""
    add_found = wire.add_found
    payload_bytes = 0
    for result in results:
        data = result.data
        if data is not None:
            entry = result.entry
            assert entry is not None
            add_found(pieces, result.item.key, entry.size, entry.mtime_ms, entry.etag, data)
            payload_bytes += len(data)
        else:
            _add_failure(pieces, result)
    return payload_bytes


def _add_failure(pieces: list[bytes | memoryview], result: GetResult) -> None:
    key = result.item.key
    error = result.error
    if isinstance(error, NoSuchKey):
        status, aux = wire.Status.NOT_FOUND, wire.error_aux(error.code, error.detail)
    elif isinstance(error, PetrelError):
        status, aux = wire.Status.ERROR, wire.error_aux(error.code, error.detail)
    else:
        log.error("batch get of %s/%s failed: %r", result.item.bucket, key, error)
        status, aux = wire.Status.ERROR, wire.error_aux("InternalError", str(error))
    wire.add_frame(pieces, status, key, aux)


async def batch_put_objects(call: Call) -> web.StreamResponse:
    body = await call.read_body(request_bytes_max(call.store.limits, with_data=True))
    frames = _decode(body, wire.Kind.PUT_REQUEST, call)
    call.store.head_bucket(call.bucket)
    items: list[PutItem] = []
    for item in frames:
        try:
            content_type = str(item.aux, "utf-8")
        except UnicodeDecodeError:
            raise MalformedBatch(f"content type of {item.key!r} is not UTF-8") from None
        items.append(PutItem(call.bucket, item.key, bytes(item.data),
                             ObjectMeta(content_type, ())))
    results = await call.store.put_objects(items)
    pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.PUT_RESPONSE)]
    for put, result in zip(items, results, strict=True):
        if isinstance(result, ObjectInfo):
            pieces += wire.frame(wire.Status.OK, put.key, result.etag.encode("ascii"))
        else:
            pieces += wire.frame(wire.Status.ERROR, put.key,
                                 wire.error_aux(result.code, result.detail))
    pieces.append(wire.end_frame(len(items)))
    return web.Response(status=200, body=b"".join(pieces),
                        headers={"Content-Type": wire.CONTENT_TYPE})
