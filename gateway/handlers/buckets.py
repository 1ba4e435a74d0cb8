"""Service and bucket operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket,
GetBucketLocation, ListObjects (v1, v2), ListObjectVersions, DeleteObjects, and the
read-only answers clients ask for (GetBucketVersioning, GetBucketAcl)."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from petrel.errors import InvalidArgument
from petrel.model import ListResult
from petrel_gateway import xml
from petrel_gateway.handlers.base import Call, xml_response
from petrel_gateway.request import is_decimal


async def list_buckets(call: Call) -> web.StreamResponse:
    return xml_response(xml.list_buckets_xml(call.store.list_buckets(), call.owner))


async def create_bucket(call: Call) -> web.StreamResponse:
    body = await call.read_small_body()
    xml.parse_create_bucket(body)  # validated; one region per gateway
    await call.store.create_bucket(call.bucket)
    return web.Response(status=200, headers={"Location": f"/{call.bucket}"})


async def delete_bucket(call: Call) -> web.StreamResponse:
    await call.store.delete_bucket(call.bucket)
    return web.Response(status=204)


async def head_bucket(call: Call) -> web.StreamResponse:
    call.store.head_bucket(call.bucket)
    return web.Response(status=200, headers={"x-amz-bucket-region": call.settings.region})


async def get_bucket_location(call: Call) -> web.StreamResponse:
    call.store.head_bucket(call.bucket)
    return xml_response(xml.location_xml(call.settings.region))


async def get_bucket_versioning(call: Call) -> web.StreamResponse:
    call.store.head_bucket(call.bucket)
    return xml_response(xml.versioning_xml())


async def get_bucket_acl(call: Call) -> web.StreamResponse:
    call.store.head_bucket(call.bucket)
    return xml_response(xml.acl_xml(call.owner))


def _max_keys(call: Call) -> int:
    raw = call.query.get("max-keys", "1000")
    if not is_decimal(raw):
        raise InvalidArgument("max-keys must be a non-negative integer")
    return min(int(raw), call.store.limits.list_keys_max)


def _url_encoding(call: Call) -> bool:
    encoding = call.query.get("encoding-type")
    if encoding not in (None, "url"):
        raise InvalidArgument("encoding-type must be url")
    return encoding == "url"


def _list(call: Call, start_after: str, max_keys: int) -> tuple[ListResult, xml.ListingPage]:
    prefix = call.query.get("prefix", "")
    delimiter = call.query.get("delimiter", "")
    result = call.store.list_objects(call.bucket, prefix=prefix, delimiter=delimiter,
                                     start_after=start_after, max_keys=max_keys)
    page = xml.ListingPage(call.bucket, prefix, delimiter, max_keys, result.objects,
                           result.common_prefixes, result.is_truncated, _url_encoding(call))
    return result, page


async def list_objects(call: Call) -> web.StreamResponse:
    marker = call.query.get("marker", "")
    result, page = _list(call, marker, _max_keys(call))
    return xml_response(xml.list_objects_xml(page, marker, result.next_marker, call.owner))


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument("The continuation token provided is incorrect") from exc


async def list_objects_v2(call: Call) -> web.StreamResponse:
    token = call.query.get("continuation-token")
    start_after = call.query.get("start-after", "")
    after = decode_token(token) if token is not None else start_after
    result, page = _list(call, after, _max_keys(call))
    next_token = encode_token(result.next_marker) if result.next_marker else None
    fetch_owner = call.query.get("fetch-owner", "false").lower() == "true"
    return xml_response(xml.list_objects_v2_xml(
        page, start_after=start_after, token=token, next_token=next_token,
        fetch_owner=fetch_owner, owner=call.owner))


async def list_object_versions(call: Call) -> web.StreamResponse:
    key_marker = call.query.get("key-marker", "")
    result, page = _list(call, key_marker, _max_keys(call))
    return xml_response(xml.list_object_versions_xml(page, key_marker, result.next_marker,
                                                     call.owner))


async def delete_objects(call: Call) -> web.StreamResponse:
    body = await call.read_small_body()
    keys, quiet = xml.parse_delete_objects(body, call.store.limits.batch_items_max)
    outcomes = await call.store.delete_objects(call.bucket, keys)
    deleted: list[str] = []
    errors: list[tuple[str, str, str]] = []
    for key, outcome in zip(keys, outcomes, strict=True):
        if isinstance(outcome, Exception):
            errors.append((key, getattr(outcome, "code", "InternalError"), str(outcome)))
        else:
            deleted.append(key)
    return xml_response(xml.delete_objects_xml(xml.DeleteResult(deleted, errors), quiet))
