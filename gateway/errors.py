"""The one place that turns exceptions into S3 error responses.

Handlers raise `petrel.errors.PetrelError` subclasses (or let anything else escape);
`render_exception` renders them as S3 XML with Code, Message, Resource and RequestId. Anything
unexpected becomes a logged 500 InternalError; aiohttp's own HTTP errors (an oversized
header, a body over the limit) are mapped to their S3 equivalents.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from petrel.errors import (
    EntityTooLarge,
    InternalError,
    InvalidArgument,
    InvalidRequest,
    MethodNotAllowed,
    PetrelError,
    SlowDown,
)
from petrel_gateway.context import REQUEST_ID
from petrel_gateway.xml import error_xml

log = logging.getLogger("petrel.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _from_http(exc: web.HTTPException) -> PetrelError:
    if exc.status == 413:
        return EntityTooLarge()
    if exc.status == 405:
        return MethodNotAllowed()
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.reason)
    return InternalError()


def error_response(request: web.Request, error: PetrelError) -> web.Response:
    request_id = request.get(REQUEST_ID, "")
    resource = error.resource or request.path
    headers = {"Content-Type": "application/xml"}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if request.method == "HEAD":  # HEAD responses carry no body
        return web.Response(status=error.status, headers=headers)
    body = error_xml(error.code, error.detail, resource, request_id)
    return web.Response(status=error.status, body=body, headers=headers)


def render_exception(request: web.Request, exc: Exception) -> web.Response:
    """The S3 error response for an exception a handler raised. aiohttp's own HTTP
    errors below 400 (redirects) are re-raised; anything unexpected is logged and
    becomes a 500 InternalError."""
    if isinstance(exc, web.HTTPException) and exc.status < 400:
        raise exc
    return error_response(request, as_s3_error(exc, request.method, request.path))


def as_s3_error(exc: Exception, method: str, path: str) -> PetrelError:
    """The S3 error to answer for `exc`, logged when it is the server's fault."""
    if isinstance(exc, PetrelError):
        # Throttling is counted in /metrics, not logged: a flood of refused requests
        # must not become a flood of log lines.
        if exc.status >= 500 and not isinstance(exc, SlowDown):
            log.warning("%s %s -> %s: %s", method, path, exc.code, exc.detail)
        return exc
    if isinstance(exc, web.HTTPException):
        return _from_http(exc)
    if isinstance(exc, UnicodeError):
        return InvalidArgument(f"invalid UTF-8: {exc}")
    log.error("unhandled error in %s %s", method, path, exc_info=exc)
    return InternalError()
