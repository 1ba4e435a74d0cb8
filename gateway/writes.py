"""Writes that reader processes take and the primary stores (`server.processes` > 1).

A reader that receives a small PutObject does everything the fast lane does before a
write (authentication, the body and its digests, the metadata, the bucket and key
checks, the MD5) and passes the object to the primary over a Unix socket pair of its
own, the write link. The primary, which alone writes, stores it (`Store.put_object`,
durable per the durability mode) and answers with its ETag or its error; only then does
the reader answer the client. So the connection stays with the reader, and a mixed
load of reads and writes keeps using every core: the primary spends on a passed write
only the store's own work.

Both ends run on their event loops (asyncio protocols, no threads). A frame is a kind
byte, a 4-byte big-endian payload length, an 8-byte request number, and the payload
(pickled: both ends are this program):

    reader -> primary   PUT     (bucket, key, data, meta, md5)
    primary -> reader   ANSWER  ("ok", etag) or ("error", class, detail, resource, retry)

If the link ends (the primary is gone), a write waiting on it fails with
WriteOutcomeUnknown: the primary may have stored it, so the reader answers nothing and
drops the client's connection, as a crashed single process would. A write not yet
sent when the link is gone raises NotServedHere (the connection then goes the way of
every other one a reader cannot serve).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from typing import Any, cast

from petrel import format as fmt
from petrel.errors import InternalError, NotServedHere, PetrelError

log = logging.getLogger("petrel.writes")

PUT, ANSWER = b"P", b"A"
_HEADER = struct.Struct(">cIQ")
# The largest payload a frame may carry: an object the lane takes whole is at most the
# packing threshold (1 MiB by default, 64 MiB at most); more is a broken link.
_PAYLOAD_BYTES_MAX = 80 * 1024 * 1024


class WriteOutcomeUnknown(Exception):
    """The link ended while the primary had the write: it may or may not be stored."""


class _Frames(asyncio.Protocol):
    """Framing shared by both ends: `frame` is called once per whole frame received."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position = 0
        while len(buffer) - position >= _HEADER.size:
            kind, length, number = _HEADER.unpack_from(buffer, position)
            if length > _PAYLOAD_BYTES_MAX:
                log.error("write link: a %d-byte frame; closing the link", length)
                assert self.transport is not None
                self.transport.close()
                return
            end = position + _HEADER.size + length
            if end > len(buffer):
                break
            with memoryview(buffer) as view:  # one copy out (a slice of it is another)
                payload = view[position + _HEADER.size:end].tobytes()
            position = end
            self.frame(kind, number, payload)
        del buffer[:position]

    def send(self, kind: bytes, number: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.writelines([_HEADER.pack(kind, len(payload), number), payload])

    def frame(self, kind: bytes, number: int, payload: bytes) -> None:
        raise NotImplementedError


class WriteServer(_Frames):
    """The primary's end of one reader's write link: stores what the reader passes."""

    def __init__(self, store: Any) -> None:
        super().__init__()
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()

    def frame(self, kind: bytes, number: int, payload: bytes) -> None:
        if kind != PUT:
            log.error("write link: unknown frame kind %r; closing the link", kind)
            assert self.transport is not None
            self.transport.close()
            return
        task = asyncio.get_running_loop().create_task(self._put(number, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, number: int, payload: bytes) -> None:
        answer: tuple[Any, ...]
        try:
            bucket, key, data, meta, md5 = pickle.loads(payload)
            info = await self._store.put_object(bucket, key, data, meta, md5=md5)
            answer = ("ok", info.etag)
        except PetrelError as exc:
            answer = ("error", type(exc), exc.detail, exc.resource, exc.retry_after_s)
        except Exception:  # the reader answers 500, as the primary would
            log.exception("a write passed on by a reader failed")
            answer = ("error", InternalError, InternalError.message, None, None)
        if self.transport is not None and not self.transport.is_closing():
            self.send(ANSWER, number, pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))

    def connection_lost(self, exc: Exception | None) -> None:
        # Writes under way finish in the store (each is whole or absent); their answers
        # have nowhere to go, and the reader failed them with ServiceUnavailable.
        self.transport = None


class WriteClient(_Frames):
    """A reader's end of its write link."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._next = 0
        self.closed = False

    async def put_object(self, bucket: str, key: str, data: bytes, meta: fmt.ObjectMeta,
                         md5: bytes) -> str:
        """The stored object's ETag once the primary has stored it (durable per its
        durability mode); raises what the primary raised, NotServedHere when the link
        was gone before it was sent, WriteOutcomeUnknown when it went meanwhile."""
        if self.closed:
            raise NotServedHere("the primary process is gone")
        self._next += 1
        number = self._next
        waiting = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiting
        self.send(PUT, number, pickle.dumps((bucket, key, data, meta, md5),
                                            pickle.HIGHEST_PROTOCOL))
        answer = await waiting
        if answer[0] == "ok":
            return str(answer[1])
        _, error_class, detail, resource, retry_after_s = answer
        error = error_class(detail, resource=resource)
        if retry_after_s != error_class.retry_after_s:
            error.retry_after_s = retry_after_s
        raise error

    def frame(self, kind: bytes, number: int, payload: bytes) -> None:
        waiting = self._waiting.pop(number, None)
        if kind != ANSWER or waiting is None:
            log.error("write link: unexpected frame %r #%d; closing the link", kind, number)
            assert self.transport is not None
            self.transport.close()
            return
        if not waiting.done():
            waiting.set_result(pickle.loads(payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(WriteOutcomeUnknown("the primary process is gone"))
