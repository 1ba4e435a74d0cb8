"""Reading an S3 request: which bucket and key it addresses, its headers, its body.

Kept apart from the handlers so that every handler parses the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiMapping

from petrel import format as fmt
from petrel.errors import (
    InvalidRange,
    MetadataTooLarge,
)
from petrel.model import ByteRange

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True, slots=True)
class Target:
    bucket: str | None
    key: str | None


def is_decimal(text: str) -> bool:
    """ASCII digits only. str.isdigit() also accepts '²' and other digits that int()
    refuses, which would turn a bad header into a 500 instead of a 400."""
    return text.isascii() and text.isdigit()


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The payload length a request announces: x-amz-decoded-content-length for an
    aws-chunked body, else Content-Length; None when neither is a decimal number."""
    value = headers.get("x-amz-decoded-content-length") or headers.get("Content-Length")
    return int(value) if value is not None and is_decimal(value) else None


def resolve_target(request: web.Request, domains: tuple[str, ...]) -> Target:
    """Bucket and key from virtual-hosted (bucket.domain) or path-style addressing."""
    return target_of(request.host, request.raw_path.split("?", 1)[0], domains)


def target_of(host: str | None, raw_path: str, domains: tuple[str, ...]) -> Target:
    """Bucket and key of a request for `host` (the Host header) and `raw_path` (as on
    the wire, without the query). The key comes from the raw path, percent-decoded
    once ('+' stays '+'). Raises UnicodeDecodeError for bytes that are not UTF-8."""
    host = host.rsplit(":", 1)[0].lower() if host else ""
    for domain in domains:
        suffix = "." + domain
        if host.endswith(suffix) and len(host) > len(suffix):
            hosted_key = unquote(raw_path[1:], errors="strict") if len(raw_path) > 1 else ""
            return Target(host[: -len(suffix)], hosted_key or None)
    parts = raw_path[1:].split("/", 1)
    bucket = unquote(parts[0], errors="strict") if parts[0] else None
    key = unquote(parts[1], errors="strict") if len(parts) == 2 and parts[1] else None
    return Target(bucket, key)


def user_metadata(headers: MultiMapping[str], limit_bytes: int) -> fmt.ObjectMeta:
    """x-amz-meta-* headers (names lower-cased, as S3 stores them) and Content-Type."""
    pairs = []
    total = 0
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            short = lower[len("x-amz-meta-") :]
            total += len(short.encode()) + len(value.encode())
            pairs.append((short, value))
    if total > limit_bytes:
        raise MetadataTooLarge()
    content_type = headers.get("Content-Type", "")
    return fmt.ObjectMeta(content_type, tuple(sorted(pairs)))




def parse_range(header: str | None, size: int) -> ByteRange | None:
    """RFC 7233 single byte range, as S3 serves it. Multiple ranges are served whole
    (S3 ignores them); an unsatisfiable range raises InvalidRange."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # unparseable or multi-range: ignored, the whole object is served
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise InvalidRange()
        if size == 0:
            return None  # the whole (empty) representation, as RFC 7233 says: 200
        start = max(0, size - suffix)
        return ByteRange(start, size - start)
    start = int(first)
    if start >= size:
        raise InvalidRange()
    end = size - 1 if not last else min(int(last), size - 1)
    if end < start:
        return None  # syntactically invalid: ignored, as RFC 7233 says
    return ByteRange(start, end - start + 1)

