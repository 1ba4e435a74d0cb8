"""Authentication of each request, and the body reader that goes with it.

`authenticate` verifies SigV4 (header or presigned URL, petrel_gateway.auth) and returns
who is calling plus a body reader that decodes aws-chunked framing and verifies every
digest (petrel_gateway.chunked) before the last chunk is handed over. Unsigned requests
are refused unless they only read a bucket configured public-read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Container, Mapping
from dataclasses import dataclass

from aiohttp import web

from petrel.errors import AccessDenied, IncompleteBody, InvalidRequest, RequestTimeout
from petrel_gateway.auth import AuthLimits, AuthResult, SigV4Verifier
from petrel_gateway.chunked import BodyDecoder, open_body
from petrel_gateway.handlers.base import BodyReader
from petrel_gateway.settings import GatewaySettings

VERIFIER = web.AppKey("petrel.verifier", SigV4Verifier)

# Operations an anonymous caller may perform on a public-read bucket.
PUBLIC_READ_OPERATIONS = frozenset({
    "get_object", "head_object", "list_objects", "list_objects_v2", "head_bucket",
    "get_bucket_location",
})
_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Identity:
    access_key: str | None
    owner_id: str
    body_reader: BodyReader


def make_verifier(settings: GatewaySettings) -> SigV4Verifier:
    limits = AuthLimits(clock_skew_s_max=settings.clock_skew_s_max)
    return SigV4Verifier(settings.credentials, region=None, limits=limits)


def authenticate(request: web.Request, settings: GatewaySettings, bucket: str | None,
                 operation: str) -> Identity:
    """Raises the S3 auth errors (AccessDenied, SignatureDoesNotMatch, ...)."""
    url = request.rel_url
    result = identify(request.app[VERIFIER], settings, request.method, url.raw_path,
                      url.raw_query_string, request.headers, url.query.keys(), bucket,
                      operation, request.path)
    if result is None:
        return Identity(None, "anonymous", _anonymous_body)
    return Identity(result.access_key_id, result.access_key_id,
                    _reader(result, settings.body_idle_timeout_s))


def identify(verifier: SigV4Verifier, settings: GatewaySettings, method: str,
             raw_path: str, raw_query: str, headers: Mapping[str, str],
             query_names: Container[str], bucket: str | None, operation: str,
             path: str) -> AuthResult | None:
    """Who sends this request: its verified SigV4 result, or None for an anonymous
    request that may proceed (a read of a public-read bucket). Raises the S3 auth
    errors. `headers` is case-insensitive (a multidict) or has lower-case names only;
    `query_names` the decoded query parameter names; `path` the decoded path (the
    Resource of AccessDenied)."""
    authorization = headers.get("authorization", "")
    if "AWSAccessKeyId" in query_names or authorization.startswith("AWS "):
        # Signature V2, as S3's V4-only regions answer it.
        raise InvalidRequest("The authorization mechanism you have provided is not "
                             "supported. Please use AWS4-HMAC-SHA256.")
    if "authorization" not in headers and "X-Amz-Signature" not in query_names and \
            "X-Amz-Credential" not in query_names:
        if bucket in settings.public_read_buckets and operation in PUBLIC_READ_OPERATIONS:
            return None
        raise AccessDenied("Anonymous access is forbidden for this operation",
                           resource=path)
    return verifier.verify(method, raw_path, raw_query, headers)


def _reader(result: AuthResult, idle_timeout_s: float) -> BodyReader:
    def read(request: web.Request) -> AsyncIterator[bytes]:
        return verified_body(request, open_body(result, request.headers), idle_timeout_s)

    return read


async def verified_body(request: web.Request, decoder: BodyDecoder,
                        idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The decoded payload in chunks. The stream's end (and every digest) is checked
    before the iterator finishes, so a consumer that commits only after exhausting it
    never commits a short, long or corrupted body. A body that stalls for
    `idle_timeout_s` fails with RequestTimeout."""
    declared = request.content_length
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                piece = await request.content.read(_READ_BYTES)
        except TimeoutError as exc:
            raise RequestTimeout() from exc
        if not piece:
            break
        received += len(piece)
        payload = decoder.feed(piece)
        if payload:
            yield payload
    if declared is not None and received != declared:
        raise IncompleteBody(f"received {received} of {declared} bytes")
    decoder.finish()


async def _anonymous_body(request: web.Request) -> AsyncIterator[bytes]:
    if False:  # anonymous callers only read; they never send a body to store
        yield b""
