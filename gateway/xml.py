"""S3 XML: rendering responses, and parsing request bodies with defusedxml (request
bodies are untrusted: no entities, no DTDs, bounded size)."""

from __future__ import annotations

import datetime as dt
import functools
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException

from petrel.errors import MalformedXML
from petrel.model import BucketInfo, ObjectInfo
from petrel_gateway.request import is_decimal

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601_ms(ms: int) -> str:
    """S3 listing timestamps: 2009-10-12T17:50:30.000Z."""
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(ms: int) -> str:
    """HTTP headers (Last-Modified): Wed, 12 Oct 2009 17:50:00 GMT. Formatted by hand:
    it runs on every GET and HEAD, and strftime is locale-dependent and slower."""
    return _http_date(ms // 1000)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    # Cached: objects written in the same second share their Last-Modified.
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=S3_NS)


def _add(parent: ET.Element, tag: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    return child


def render(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return XML_DECLARATION + body


def error_xml(code: str, message: str, resource: str, request_id: str) -> bytes:
    root = ET.Element("Error")
    for tag, text in (("Code", code), ("Message", message), ("Resource", resource),
                      ("RequestId", request_id)):
        _add(root, tag, text)
    return render(root)


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    display_name: str


def _owner(parent: ET.Element, owner: Owner, tag: str = "Owner") -> None:
    node = _add(parent, tag)
    _add(node, "ID", owner.id)
    _add(node, "DisplayName", owner.display_name)


def list_buckets_xml(buckets: Iterable[BucketInfo], owner: Owner) -> bytes:
    root = _root("ListAllMyBucketsResult")
    _owner(root, owner)
    node = _add(root, "Buckets")
    for bucket in buckets:
        item = _add(node, "Bucket")
        _add(item, "Name", bucket.name)
        _add(item, "CreationDate", iso8601_ms(bucket.created_ms))
    return render(root)


def location_xml(region: str) -> bytes:
    root = _root("LocationConstraint")
    # us-east-1 is answered as an empty constraint, as S3 does.
    root.text = "" if region == "us-east-1" else region
    return render(root)


def quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def _encode(value: str, url: bool) -> str:
    return quote(value, safe="/") if url else value


def _contents(parent: ET.Element, obj: ObjectInfo, owner: Owner | None, url: bool,
              tag: str = "Contents") -> ET.Element:
    item = _add(parent, tag)
    _add(item, "Key", _encode(obj.key, url))
    _add(item, "LastModified", iso8601_ms(obj.last_modified_ms))
    _add(item, "ETag", quoted_etag(obj.etag))
    _add(item, "Size", obj.size)
    _add(item, "StorageClass", "STANDARD")
    if owner is not None:
        _owner(item, owner)
    return item


@dataclass(frozen=True, slots=True)
class ListingPage:
    """What ListObjects v1/v2 and ListObjectVersions render."""

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool
    url_encode: bool


def _listing_common(root: ET.Element, page: ListingPage) -> None:
    _add(root, "Name", page.bucket)
    _add(root, "Prefix", _encode(page.prefix, page.url_encode))
    if page.delimiter:
        _add(root, "Delimiter", _encode(page.delimiter, page.url_encode))
    _add(root, "MaxKeys", page.max_keys)
    if page.url_encode:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", page.is_truncated)


def _common_prefixes(root: ET.Element, page: ListingPage) -> None:
    for prefix in page.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _encode(prefix, page.url_encode))


def list_objects_xml(page: ListingPage, marker: str, next_marker: str | None,
                     owner: Owner) -> bytes:
    root = _root("ListBucketResult")
    _listing_common(root, page)
    _add(root, "Marker", _encode(marker, page.url_encode))
    if next_marker is not None:
        _add(root, "NextMarker", _encode(next_marker, page.url_encode))
    for obj in page.objects:
        _contents(root, obj, owner, page.url_encode)
    _common_prefixes(root, page)
    return render(root)


def list_objects_v2_xml(page: ListingPage, *, start_after: str, token: str | None,
                        next_token: str | None, fetch_owner: bool, owner: Owner) -> bytes:
    root = _root("ListBucketResult")
    _listing_common(root, page)
    _add(root, "KeyCount", len(page.objects) + len(page.common_prefixes))
    if token is not None:
        _add(root, "ContinuationToken", token)
    if next_token is not None:
        _add(root, "NextContinuationToken", next_token)
    if start_after:
        _add(root, "StartAfter", _encode(start_after, page.url_encode))
    for obj in page.objects:
        _contents(root, obj, owner if fetch_owner else None, page.url_encode)
    _common_prefixes(root, page)
    return render(root)


def list_object_versions_xml(page: ListingPage, key_marker: str, next_key_marker: str | None,
                             owner: Owner) -> bytes:
    """Unversioned buckets: every object is its own `null` version, the latest."""
    root = _root("ListVersionsResult")
    _listing_common(root, page)
    _add(root, "KeyMarker", _encode(key_marker, page.url_encode))
    _add(root, "VersionIdMarker", "")
    if next_key_marker is not None:
        _add(root, "NextKeyMarker", _encode(next_key_marker, page.url_encode))
        _add(root, "NextVersionIdMarker", "null")
    for obj in page.objects:
        item = _contents(root, obj, owner, page.url_encode, tag="Version")
        # S3 orders Version children: Key, VersionId, IsLatest, LastModified, ETag, ...
        key = item.find("Key")
        assert key is not None
        position = list(item).index(key) + 1
        version = ET.Element("VersionId")
        version.text = "null"
        latest = ET.Element("IsLatest")
        latest.text = "true"
        item.insert(position, version)
        item.insert(position + 1, latest)
    _common_prefixes(root, page)
    return render(root)


def copy_object_xml(etag: str, last_modified_ms: int, tag: str = "CopyObjectResult") -> bytes:
    root = _root(tag)
    _add(root, "LastModified", iso8601_ms(last_modified_ms))
    _add(root, "ETag", quoted_etag(etag))
    return render(root)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: list[str]
    errors: list[tuple[str, str, str]]  # key, code, message


def delete_objects_xml(result: DeleteResult, quiet: bool) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for key in result.deleted:
            _add(_add(root, "Deleted"), "Key", key)
    for key, code, message in result.errors:
        node = _add(root, "Error")
        _add(node, "Key", key)
        _add(node, "Code", code)
        _add(node, "Message", message)
    return render(root)


def versioning_xml() -> bytes:
    return render(_root("VersioningConfiguration"))


def acl_xml(owner: Owner) -> bytes:
    root = _root("AccessControlPolicy")
    _owner(root, owner)
    grant = _add(_add(root, "AccessControlList"), "Grant")
    grantee = ET.SubElement(grant, "Grantee", {
        "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance", "xsi:type": "CanonicalUser"})
    _add(grantee, "ID", owner.id)
    _add(grantee, "DisplayName", owner.display_name)
    _add(grant, "Permission", "FULL_CONTROL")
    return render(root)


# ----- parsing -------------------------------------------------------------------------
def parse(body: bytes) -> ET.Element:
    """Parse an untrusted XML body; raises MalformedXML."""
    try:
        root: ET.Element = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise MalformedXML(str(exc)) from exc
    return root


def local_name(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if local_name(child) == name]


def child_text(element: ET.Element, name: str) -> str | None:
    found = children(element, name)
    return None if not found else (found[0].text or "")


def parse_delete_objects(body: bytes, keys_max: int) -> tuple[list[str], bool]:
    """(keys, quiet) from a DeleteObjects body."""
    root = parse(body)
    if local_name(root) != "Delete":
        raise MalformedXML("expected a Delete element")
    keys = []
    for item in children(root, "Object"):
        key = child_text(item, "Key")
        if key is None:
            raise MalformedXML("Object without Key")
        keys.append(key)
    if not keys or len(keys) > keys_max:
        raise MalformedXML(f"Delete must list 1..{keys_max} objects")
    quiet = (child_text(root, "Quiet") or "false").strip().lower() == "true"
    return keys, quiet


def parse_complete_multipart(body: bytes) -> list[tuple[int, str]]:
    """(part number, etag without quotes) pairs from CompleteMultipartUpload."""
    root = parse(body)
    if local_name(root) != "CompleteMultipartUpload":
        raise MalformedXML("expected a CompleteMultipartUpload element")
    parts = []
    for part in children(root, "Part"):
        number, etag = child_text(part, "PartNumber"), child_text(part, "ETag")
        if number is None or etag is None or not is_decimal(number.strip()):
            raise MalformedXML("Part needs PartNumber and ETag")
        parts.append((int(number), etag.strip().strip('"')))
    if not parts:
        raise MalformedXML("CompleteMultipartUpload lists no parts")
    return parts


def parse_create_bucket(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucketConfiguration body, if any."""
    if not body.strip():
        return None
    root = parse(body)
    if local_name(root) != "CreateBucketConfiguration":
        raise MalformedXML("expected a CreateBucketConfiguration element")
    return child_text(root, "LocationConstraint")
