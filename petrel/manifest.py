"""Manifests: the list of a data set's objects, stored as an object itself.

A manifest names the objects of a data set in a fixed order, so that a loader opens a
data set of millions of objects with one GET instead of a listing, and knows the order
(and sizes) to read ahead. `petrel.torch.Dataset.from_manifest` reads them; `petrel pack`
writes them. Format (docs/loader.md), UTF-8 JSON Lines, version 1:

    {"petrel_manifest": 1}
    {"key": "train/000000.jpg", "size": 10240}
    {"key": "train/000001.jpg"}

- The first line is the header, an object with `"petrel_manifest": 1` (the version; a
  reader refuses another). Other header fields are kept in `Manifest.meta`.
- Each following line is one object: `"key"` (a string, required) and `"size"` (bytes,
  optional, a non-negative integer). Other fields are ignored, so writers may add some.
- A key is relative to the bucket the manifest is stored in (the reader is told the
  base URL); a key may hold any character, JSON escapes it.
- Empty lines are ignored; anything else that is not such an object is an error.

A plain text list (one key per line, no header) is read too, for manifests written by
hand or `aws s3 ls`-style tools; such keys cannot contain a newline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
HEADER_FIELD = "petrel_manifest"
# A manifest is read whole into memory: bounded, 1 GiB is ~10 million keys.
MANIFEST_BYTES_MAX = 1 << 30


class ManifestError(ValueError):
    """A manifest that cannot be read: bad UTF-8, JSON, version, or field."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    key: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]


def encode(entries: Iterable[ManifestEntry | str], **meta: Any) -> bytes:
    """A version-1 manifest of `entries` (strings are keys without a size)."""
    if HEADER_FIELD in meta:
        raise ValueError(f"{HEADER_FIELD!r} is the version field, set by encode()")
    lines = [json.dumps({HEADER_FIELD: VERSION, **meta}, ensure_ascii=False)]
    for entry in entries:
        item = ManifestEntry(entry) if isinstance(entry, str) else entry
        record: dict[str, Any] = {"key": item.key}
        if item.size is not None:
            record["size"] = item.size
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def decode(data: bytes) -> Manifest:
    """Parse a manifest (JSON Lines with a header, or plain text). Raises ManifestError."""
    if len(data) > MANIFEST_BYTES_MAX:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_BYTES_MAX}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest is not UTF-8: {exc}") from None
    lines = text.split("\n")
    first = next((line for line in lines if line.strip()), "")
    if not first.lstrip().startswith("{"):
        keys = [line.rstrip("\r") for line in lines if line.strip()]
        return Manifest(tuple(ManifestEntry(key) for key in keys))
    return _decode_json_lines(lines)


def _decode_json_lines(lines: list[str]) -> Manifest:
    header: dict[str, Any] | None = None
    entries: list[ManifestEntry] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _json_object(line, number)
        if header is None:
            header = _check_header(record, number)
        else:
            entries.append(_entry(record, number))
    return Manifest(tuple(entries), {k: v for k, v in (header or {}).items()
                                     if k != HEADER_FIELD})


def _json_object(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"line {number}: not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ManifestError(f"line {number}: not a JSON object")
    return record


def _check_header(record: dict[str, Any], number: int) -> dict[str, Any]:
    version = record.get(HEADER_FIELD)
    if version is None:
        raise ManifestError(f"line {number}: the header has no {HEADER_FIELD!r} field")
    if version != VERSION or isinstance(version, bool):
        raise ManifestError(f"manifest version {version!r} is not supported (only {VERSION})")
    return record


def _entry(record: dict[str, Any], number: int) -> ManifestEntry:
    key = record.get("key")
    if not isinstance(key, str) or not key:
        raise ManifestError(f"line {number}: 'key' must be a non-empty string")
    size = record.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"line {number}: 'size' must be a non-negative integer")
    return ManifestEntry(key, size)
