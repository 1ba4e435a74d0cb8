"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, CopyObject, and
the read-only GetObjectAcl."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from petrel import format as fmt
from petrel.errors import (
    CorruptionError,
    EntityTooLarge,
    InvalidArgument,
    InvalidRange,
    InvalidRequest,
    MissingContentLength,
    PreconditionFailed,
)
from petrel.model import ByteRange, ObjectInfo
from petrel.store import Located
from petrel_gateway import xml
from petrel_gateway.handlers.base import Call, xml_response
from petrel_gateway.request import declared_length, is_decimal, parse_range, user_metadata

DEFAULT_CONTENT_TYPE = "binary/octet-stream"
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


def object_headers(info: ObjectInfo) -> CIMultiDict[str]:
    return CIMultiDict(object_header_pairs(info))


def object_header_pairs(info: ObjectInfo) -> list[tuple[str, str]]:
    """What GetObject and HeadObject answer about an object (the fast lane,
    gateway/fastlane.py, sends the same)."""
    pairs = [("ETag", f'"{info.etag}"'),
             ("Last-Modified", xml.http_date(info.last_modified_ms)),
             ("Content-Type", info.content_type or DEFAULT_CONTENT_TYPE),
             ("Accept-Ranges", "bytes")]
    for name, value in info.user_metadata:
        pairs.append(("x-amz-meta-" + name, value))
    return pairs


async def put_object(call: Call) -> web.StreamResponse:
    limits = call.store.limits
    meta = user_metadata(call.headers, limits.user_metadata_bytes_max)
    declared = call.request.content_length
    if declared is None and "x-amz-decoded-content-length" not in call.headers:
        raise MissingContentLength()
    payload = declared_length(call.headers)
    if payload is not None and payload > limits.object_bytes_max:
        # Refused before a byte of the body is read (the front door then closes the
        # connection instead of draining it: a 10 GB body is never read to answer no).
        raise EntityTooLarge(f"{payload} bytes announced; the most a PutObject may "
                             f"carry is {limits.object_bytes_max} (use multipart upload)")
    # Content-MD5 and x-amz-checksum-* are checked by the body reader before its last
    # chunk is handed over, so the store never commits a body that fails them.
    info = await call.store.put_object_stream(call.bucket, call.key, call.body(), meta)
    return web.Response(status=200, headers={"ETag": xml.quoted_etag(info.etag)})


# ----- reads ---------------------------------------------------------------------------
def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().strip('"') for c in header.split(",")]
    return "*" in candidates or etag in candidates


def _date(header: str | None) -> int | None:
    if not header:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None  # an unparseable date is ignored, as HTTP says
    return int(parsed.timestamp())


def check_conditions(headers: Mapping[str, str], info: ObjectInfo) -> int | None:
    """S3's precedence: If-Match before If-Unmodified-Since (412), If-None-Match before
    If-Modified-Since (304). Returns the status to answer instead, or None."""
    get = headers.get
    modified_s = info.last_modified_ms // 1000
    if_match, if_none_match = get("If-Match"), get("If-None-Match")
    if if_match is not None:
        if not _etag_matches(if_match, info.etag):
            return 412
    else:
        since = _date(get("If-Unmodified-Since"))
        if since is not None and modified_s > since:
            return 412
    if if_none_match is not None:
        if _etag_matches(if_none_match, info.etag):
            return 304
    else:
        since = _date(get("If-Modified-Since"))
        if since is not None and modified_s <= since:
            return 304
    return None


def _precondition_response(call: Call, status: int, info: ObjectInfo) -> web.Response:
    if status == 412:
        raise PreconditionFailed(resource=f"/{call.bucket}/{call.key}")
    headers = object_headers(info)
    del headers["Content-Type"]
    return web.Response(status=304, headers=headers)


def _apply_overrides(call: Call, headers: CIMultiDict[str]) -> None:
    for param, header in _RESPONSE_OVERRIDES.items():
        value = call.query.get(param)
        if value is not None:
            headers[header] = value


async def get_object_acl(call: Call) -> web.StreamResponse:
    """petrel keeps no ACLs: every object is its owner's (FULL_CONTROL), the same fixed
    answer as GetBucketAcl. Raises NoSuchKey / NoSuchBucket."""
    call.store.head_object(call.bucket, call.key)
    return xml_response(xml.acl_xml(call.owner))


async def head_object(call: Call) -> web.StreamResponse:
    located = call.store.locate_object(call.bucket, call.key)
    status = check_conditions(call.headers, located.info)
    if status is not None:
        return _precondition_response(call, status, located.info)
    headers = object_headers(located.info)
    byte_range = parse_range(call.headers.get("Range"), located.info.size)
    length = located.info.size
    response_status = 200
    if byte_range is not None:
        length = byte_range.length or 0
        end = byte_range.start + length - 1
        headers["Content-Range"] = f"bytes {byte_range.start}-{end}/{located.info.size}"
        response_status = 206
    headers["Content-Length"] = str(length)
    _apply_overrides(call, headers)
    response = web.StreamResponse(status=response_status, headers=headers)
    return response


async def get_object(call: Call) -> web.StreamResponse:
    located: Located = call.store.locate_object(call.bucket, call.key)
    info = located.info
    status = check_conditions(call.headers, info)
    if status is not None:
        return _precondition_response(call, status, info)
    byte_range = parse_range(call.headers.get("Range"), info.size)
    stream = await call.store.read_object(located, byte_range)
    headers = object_headers(info)
    _apply_overrides(call, headers)
    response_status = 200
    if byte_range is not None:
        end = stream.start + stream.length - 1
        headers["Content-Range"] = f"bytes {stream.start}-{end}/{info.size}"
        response_status = 206
    if stream.body is not None:
        return web.Response(status=response_status, body=stream.body, headers=headers)
    headers["Content-Length"] = str(stream.length)
    response = web.StreamResponse(status=response_status, headers=headers)
    await response.prepare(call.request)
    try:
        async for chunk in stream.chunks:
            await response.write(chunk)
    except CorruptionError:
        # Headers are sent: the only honest signal left is to cut the connection, so
        # the client sees a short body instead of bad bytes.
        if call.request.transport is not None:
            call.request.transport.close()
        raise
    await response.write_eof()
    return response


async def delete_object(call: Call) -> web.StreamResponse:
    await call.store.delete_object(call.bucket, call.key)
    return web.Response(status=204)


# ----- copy ----------------------------------------------------------------------------
def parse_copy_source(value: str) -> tuple[str, str]:
    """x-amz-copy-source: [/]bucket/key[?versionId=null], URL-encoded."""
    source, _, query = value.partition("?")
    if query and query not in ("versionId=null",):
        raise InvalidArgument("versioned copy sources are not supported")
    source = unquote(source).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise InvalidArgument("x-amz-copy-source must be bucket/key")
    return bucket, key


def copy_source_range(header: str | None, size: int) -> ByteRange | None:
    """x-amz-copy-source-range: bytes=first-last, both required, within the source."""
    if header is None:
        return None
    first, sep, last = header.strip().removeprefix("bytes=").partition("-")
    if not sep or not is_decimal(first) or not is_decimal(last) or int(first) > int(last):
        raise InvalidArgument("x-amz-copy-source-range must be bytes=first-last")
    if int(last) >= size:
        raise InvalidRange("The copy source range is outside the source object")
    return ByteRange(int(first), int(last) - int(first) + 1)


def _copy_conditions(call: Call, info: ObjectInfo) -> None:
    get = call.headers.get
    mapping = {"If-Match": get("x-amz-copy-source-if-match"),
               "If-None-Match": get("x-amz-copy-source-if-none-match"),
               "If-Modified-Since": get("x-amz-copy-source-if-modified-since"),
               "If-Unmodified-Since": get("x-amz-copy-source-if-unmodified-since")}
    present = CIMultiDict({k: v for k, v in mapping.items() if v is not None})
    if check_conditions(present, info) is not None:
        raise PreconditionFailed()


async def copy_object(call: Call) -> web.StreamResponse:
    src_bucket, src_key = parse_copy_source(call.headers["x-amz-copy-source"])
    source = call.store.locate_object(src_bucket, src_key)
    _copy_conditions(call, source.info)
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("x-amz-metadata-directive must be COPY or REPLACE")
    meta: fmt.ObjectMeta | None = None
    if directive == "REPLACE":
        meta = user_metadata(call.headers, call.store.limits.user_metadata_bytes_max)
    elif (src_bucket, src_key) == (call.bucket, call.key):
        raise InvalidRequest("This copy request is illegal because it is trying to copy an "
                             "object to itself without changing the object's metadata, "
                             "storage class, website redirect location or encryption "
                             "attributes.")
    info = await call.store.copy_object(src_bucket, src_key, call.bucket, call.key, meta)
    return xml_response(xml.copy_object_xml(info.etag, info.last_modified_ms))
