"""What every handler receives: one `Call` per request, already routed and
authenticated, with typed access to the store, the settings and the body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from petrel.errors import InvalidRequest
from petrel.store import Store
from petrel_gateway.request import is_decimal
from petrel_gateway.settings import GatewaySettings
from petrel_gateway.xml import Owner

# A body reader: given the request, yields the payload decoded (aws-chunked) and
# verified (signed payload hash, checksums) chunk by chunk; raises on any mismatch
# before the last chunk is released, so a bad body never becomes an object.
BodyReader = Callable[[web.Request], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class Call:
    request: web.Request
    store: Store
    settings: GatewaySettings
    bucket: str
    key: str
    owner: Owner
    body_reader: BodyReader

    @property
    def query(self) -> MultiMapping[str]:
        return self.request.query

    @property
    def headers(self) -> MultiMapping[str]:
        return self.request.headers

    def body(self) -> AsyncIterator[bytes]:
        return self.body_reader(self.request)

    async def read_small_body(self) -> bytes:
        """A small body (XML) through the same reader as object bodies, so its signed
        hash, Content-MD5 and aws-chunked framing are checked; at most
        `xml_body_bytes_max` bytes (InvalidRequest beyond)."""
        return await self.read_body(self.settings.xml_body_bytes_max)

    async def read_body(self, limit: int) -> bytes:
        """The whole body, verified as `body()` does, at most `limit` bytes: a declared
        length over it is refused before a byte is read (InvalidRequest)."""
        decoded = self.request.headers.get("x-amz-decoded-content-length", "")
        declared = int(decoded) if is_decimal(decoded) else self.request.content_length
        if declared is not None and declared > limit:
            raise InvalidRequest(f"request body over {limit} bytes")
        pieces: list[bytes] = []
        size = 0
        async for piece in self.body():
            size += len(piece)
            if size > limit:
                raise InvalidRequest(f"request body over {limit} bytes")
            pieces.append(piece)
        return b"".join(pieces)


def xml_response(body: bytes, status: int = 200, **headers: Any) -> web.Response:
    return web.Response(status=status, body=body,
                        headers={"Content-Type": "application/xml", **headers})
