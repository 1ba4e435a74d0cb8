"""petrel's batch API on the bucket URL: BatchGetObjects (`POST /bucket?batch-get`) and
BatchPutObjects (`POST /bucket?batch-put`). Bodies in both directions are petrel batch
streams (petrel/wire.py, docs/wire.md).

A batch get answers 200 and streams one frame per requested key, in request order, as
windows of keys are read; a key that is missing or fails (a range past the end, a
corrupt record) gets its own NOT_FOUND or ERROR frame and the stream goes on. A failure
of the whole request after the first byte was sent (the store closing under it) cuts the
connection before the END frame, so the client sees a truncated stream, never a short
batch. A batch put decodes and checks the whole body first (every frame's checksum),
then appends every object as one group with one durable commit.
"""

from __future__ import annotations

import logging

from aiohttp import web

from petrel import wire
from petrel.errors import MalformedBatch, NoSuchKey, PetrelError, TooManyItems
from petrel.format import ObjectMeta
from petrel.model import ByteRange, GetItem, GetResult, ObjectInfo, PutItem
from petrel_gateway.handlers.base import Call

log = logging.getLogger("petrel.gateway")

# Keys read per engine call while streaming a batch get: one index multi-get and one
# merged read plan per window. Bounds the bytes held at once (a window of 1 MiB
# packed objects is 64 MiB) while keeping neighbouring reads mergeable.
WINDOW_ITEMS = 64


def _request_bytes_max(call: Call, with_data: bool) -> int:
    """The largest well-formed request body: every item at its limits."""
    limits = call.store.limits
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
    body = await call.read_body(_request_bytes_max(call, with_data=False))
    frames = _decode(body, wire.Kind.GET_REQUEST, call)
    items: list[GetItem] = []
    for item in frames:
        byte_range = wire.frame_range(item)
        items.append(GetItem(call.bucket, item.key, None if byte_range is None
                             else ByteRange(byte_range[0], byte_range[1])))
    call.store.head_bucket(call.bucket)  # a missing bucket fails the whole request
    response = _stream_response()
    await response.prepare(call.request)
    try:
        await response.write(wire.stream_header(wire.Kind.GET_RESPONSE))
        for start in range(0, len(items), WINDOW_ITEMS):
            results = await call.store.get_objects(items[start : start + WINDOW_ITEMS])
            pieces: list[bytes | memoryview] = []
            for result in results:
                pieces += _get_frame(result)
            await response.write(b"".join(pieces))
        await response.write(wire.end_frame(len(items)))
        await response.write_eof()
    except (ConnectionError, PetrelError) as exc:
        # Headers are sent: no S3 error can be rendered any more. Cut the connection
        # before the END frame so the client knows the batch is incomplete.
        log.warning("batch get on %s cut after the response started: %s", call.bucket, exc)
        if call.request.transport is not None:
            call.request.transport.close()
    return response


def _get_frame(result: GetResult) -> list[bytes | memoryview]:
    key = result.item.key
    if result.data is not None:
        entry = result.entry
        assert entry is not None
        info = wire.ItemInfo(entry.size, entry.mtime_ms, entry.etag)
        return wire.frame(wire.Status.OK, key, wire.info_aux(info), result.data)
    error = result.error
    if isinstance(error, NoSuchKey):
        return wire.frame(wire.Status.NOT_FOUND, key, wire.error_aux(error.code, error.detail))
    if isinstance(error, PetrelError):
        return wire.frame(wire.Status.ERROR, key, wire.error_aux(error.code, error.detail))
    log.error("batch get of %s/%s failed: %r", result.item.bucket, key, error)
    return wire.frame(wire.Status.ERROR, key, wire.error_aux("InternalError", str(error)))


async def batch_put_objects(call: Call) -> web.StreamResponse:
    body = await call.read_body(_request_bytes_max(call, with_data=True))
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
