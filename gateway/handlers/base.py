"""What every handler receives: one `Call` per request, already routed and
authenticated, with typed access to the store, the settings and the body."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from petrel.store import Store
from petrel_gateway.request import check_md5, content_md5
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

    def check_content_md5(self, body: bytes) -> None:
        check_md5(content_md5(self.headers), hashlib.md5(body).hexdigest())


def xml_response(body: bytes, status: int = 200, **headers: Any) -> web.Response:
    return web.Response(status=status, body=body,
                        headers={"Content-Type": "application/xml", **headers})
