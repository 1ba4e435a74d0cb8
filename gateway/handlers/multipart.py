"""Multipart upload operations: CreateMultipartUpload, UploadPart, UploadPartCopy,
CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from aiohttp import web

from petrel.errors import InvalidArgument
from petrel.multipart import Part, Upload
from petrel_gateway import xml
from petrel_gateway.handlers.base import Call, xml_response
from petrel_gateway.handlers.objects import copy_source_range, parse_copy_source
from petrel_gateway.request import is_decimal, user_metadata


def _add(parent: ET.Element, tag: str, text: str | int) -> None:
    ET.SubElement(parent, tag).text = str(text)


def _int_param(call: Call, name: str, default: int, low: int, high: int) -> int:
    raw = call.query.get(name)
    if raw is None:
        return default
    if not is_decimal(raw) or not low <= int(raw) <= high:
        raise InvalidArgument(f"{name} must be an integer between {low} and {high}")
    return int(raw)


async def create_multipart_upload(call: Call) -> web.StreamResponse:
    meta = user_metadata(call.headers, call.store.limits.user_metadata_bytes_max)
    upload = call.store.create_multipart_upload(call.bucket, call.key, meta)
    root = ET.Element("InitiateMultipartUploadResult", xmlns=xml.S3_NS)
    _add(root, "Bucket", call.bucket)
    _add(root, "Key", call.key)
    _add(root, "UploadId", upload.upload_id)
    return xml_response(xml.render(root))


async def upload_part(call: Call) -> web.StreamResponse:
    number = _int_param(call, "partNumber", 0, 1, 10_000)
    part = await call.store.upload_part(call.bucket, call.key, call.query["uploadId"], number,
                                        call.body())
    return web.Response(status=200, headers={"ETag": xml.quoted_etag(part.etag)})


async def upload_part_copy(call: Call) -> web.StreamResponse:
    number = _int_param(call, "partNumber", 0, 1, 10_000)
    src_bucket, src_key = parse_copy_source(call.headers["x-amz-copy-source"])
    source = call.store.locate_object(src_bucket, src_key)
    byte_range = copy_source_range(call.headers.get("x-amz-copy-source-range"),
                                   source.info.size)
    part = await call.store.upload_part_copy(call.bucket, call.key, call.query["uploadId"],
                                             number, src_bucket, src_key, byte_range)
    return xml_response(xml.copy_object_xml(part.etag, part.modified_ms, "CopyPartResult"))


async def complete_multipart_upload(call: Call) -> web.StreamResponse:
    body = await call.read_small_body()
    parts = xml.parse_complete_multipart(body)
    info = await call.store.complete_multipart_upload(call.bucket, call.key,
                                                      call.query["uploadId"], parts)
    root = ET.Element("CompleteMultipartUploadResult", xmlns=xml.S3_NS)
    _add(root, "Location", f"/{call.bucket}/{call.key}")
    _add(root, "Bucket", call.bucket)
    _add(root, "Key", call.key)
    _add(root, "ETag", xml.quoted_etag(info.etag))
    return xml_response(xml.render(root))


async def abort_multipart_upload(call: Call) -> web.StreamResponse:
    call.store.abort_multipart_upload(call.bucket, call.key, call.query["uploadId"])
    return web.Response(status=204)


def _owner(parent: ET.Element, tag: str, owner: xml.Owner) -> None:
    node = ET.SubElement(parent, tag)
    _add(node, "ID", owner.id)
    _add(node, "DisplayName", owner.display_name)


def _part(root: ET.Element, part: Part) -> None:
    node = ET.SubElement(root, "Part")
    _add(node, "PartNumber", part.number)
    _add(node, "LastModified", xml.iso8601_ms(part.modified_ms))
    _add(node, "ETag", xml.quoted_etag(part.etag))
    _add(node, "Size", part.size)


async def list_parts(call: Call) -> web.StreamResponse:
    upload_id = call.query["uploadId"]
    max_parts = _int_param(call, "max-parts", 1000, 0, 1000)
    marker = _int_param(call, "part-number-marker", 0, 0, 10_000)
    parts = [p for p in call.store.list_parts(call.bucket, call.key, upload_id)
             if p.number > marker]
    shown, truncated = parts[:max_parts], len(parts) > max_parts
    root = ET.Element("ListPartsResult", xmlns=xml.S3_NS)
    _add(root, "Bucket", call.bucket)
    _add(root, "Key", call.key)
    _add(root, "UploadId", upload_id)
    _owner(root, "Initiator", call.owner)
    _owner(root, "Owner", call.owner)
    _add(root, "StorageClass", "STANDARD")
    _add(root, "PartNumberMarker", marker)
    if shown:
        _add(root, "NextPartNumberMarker", shown[-1].number)
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", "true" if truncated else "false")
    for part in shown:
        _part(root, part)
    return xml_response(xml.render(root))


def _upload(root: ET.Element, upload: Upload, owner: xml.Owner) -> None:
    node = ET.SubElement(root, "Upload")
    _add(node, "Key", upload.key)
    _add(node, "UploadId", upload.upload_id)
    _owner(node, "Initiator", owner)
    _owner(node, "Owner", owner)
    _add(node, "StorageClass", "STANDARD")
    _add(node, "Initiated", xml.iso8601_ms(upload.started_ms))


async def list_multipart_uploads(call: Call) -> web.StreamResponse:
    prefix = call.query.get("prefix", "")
    key_marker = call.query.get("key-marker", "")
    id_marker = call.query.get("upload-id-marker", "")
    max_uploads = _int_param(call, "max-uploads", 1000, 0, 1000)
    uploads = [u for u in call.store.list_multipart_uploads(call.bucket, prefix)
               if (u.key, u.upload_id) > (key_marker, id_marker) or u.key > key_marker]
    shown, truncated = uploads[:max_uploads], len(uploads) > max_uploads
    root = ET.Element("ListMultipartUploadsResult", xmlns=xml.S3_NS)
    _add(root, "Bucket", call.bucket)
    _add(root, "KeyMarker", key_marker)
    _add(root, "UploadIdMarker", id_marker)
    if truncated:
        _add(root, "NextKeyMarker", shown[-1].key)
        _add(root, "NextUploadIdMarker", shown[-1].upload_id)
    _add(root, "Prefix", prefix)
    _add(root, "MaxUploads", max_uploads)
    _add(root, "IsTruncated", "true" if truncated else "false")
    for upload in shown:
        _upload(root, upload, call.owner)
    return xml_response(xml.render(root))
