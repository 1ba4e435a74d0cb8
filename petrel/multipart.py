"""Multipart uploads: parts staged on local disk, assembled into one object on complete.

Layout: ``<data>/uploads/<upload id>/upload.json`` (bucket, key, metadata, started) and
one file per part, ``<part number>.part``, with ``<part number>.json`` (size, MD5). A part
file is written to a temporary name, fsynced and renamed, so an acknowledged part
survives a crash and a re-sent part replaces the old one whole.

Completing streams the parts, in order, into the store as one object (packed if small,
a backend blob if large) with the S3 multipart ETag: the MD5 of the parts' binary MD5s,
then ``-N``. Staged parts are not in the index: an upload never completed is only disk
space, listed by ListMultipartUploads and removed by AbortMultipartUpload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass

from petrel import format as fmt
from petrel.errors import (
    EntityTooLarge,
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    NoSuchUpload,
)

PART_NUMBER_MAX = 10_000
PART_READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    meta: fmt.ObjectMeta
    started_ms: int


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str  # hex MD5, without quotes
    modified_ms: int


class Multipart:
    """Staged multipart uploads of one store."""

    def __init__(self, root: str, *, part_bytes_min: int, part_bytes_max: int,
                 object_bytes_max: int) -> None:
        self.root = root
        self.part_bytes_min = part_bytes_min
        self.part_bytes_max = part_bytes_max
        self.object_bytes_max = object_bytes_max
        os.makedirs(root, exist_ok=True)
        self._completing: set[str] = set()

    # ----- paths -------------------------------------------------------------------
    def _dir(self, upload_id: str) -> str:
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            raise NoSuchUpload(resource=upload_id)
        return os.path.join(self.root, upload_id)

    def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        """The upload, checking it belongs to bucket/key. Raises NoSuchUpload."""
        path = os.path.join(self._dir(upload_id), "upload.json")
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except FileNotFoundError as exc:
            raise NoSuchUpload(resource=upload_id) from exc
        upload = Upload(upload_id, raw["bucket"], raw["key"],
                        fmt.ObjectMeta(raw["content_type"],
                                       tuple((k, v) for k, v in raw["user"])),
                        raw["started_ms"])
        if (upload.bucket, upload.key) != (bucket, key):
            raise NoSuchUpload(resource=upload_id)
        return upload

    # ----- operations --------------------------------------------------------------
    def create(self, bucket: str, key: str, meta: fmt.ObjectMeta) -> Upload:
        upload_id = uuid.uuid4().hex
        directory = os.path.join(self.root, upload_id)
        os.makedirs(directory)
        upload = Upload(upload_id, bucket, key, meta, time.time_ns() // 1_000_000)
        document = {"bucket": bucket, "key": key, "content_type": meta.content_type,
                    "user": [list(p) for p in meta.user], "started_ms": upload.started_ms}
        _write_atomic(os.path.join(directory, "upload.json"),
                      json.dumps(document).encode())
        return upload

    async def upload_part(self, upload: Upload, number: int, chunks: AsyncIterable[bytes]) -> Part:
        if not 1 <= number <= PART_NUMBER_MAX:
            raise InvalidArgument(f"Part number must be an integer between 1 and "
                                  f"{PART_NUMBER_MAX}, inclusive")
        directory = self._dir(upload.upload_id)
        tmp = os.path.join(directory, f".{uuid.uuid4().hex}.tmp")
        md5 = hashlib.md5()
        size = 0
        loop = asyncio.get_running_loop()
        try:
            with open(tmp, "wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.part_bytes_max:
                        raise EntityTooLarge()
                    md5.update(chunk)
                    handle.write(chunk)
                handle.flush()
                await loop.run_in_executor(None, os.fsync, handle.fileno())
            if not os.path.isdir(directory):
                raise NoSuchUpload(resource=upload.upload_id)
            part = Part(number, size, md5.hexdigest(), time.time_ns() // 1_000_000)
            _write_atomic(os.path.join(directory, f"{number}.json"), json.dumps(
                {"size": part.size, "etag": part.etag, "modified_ms": part.modified_ms}
            ).encode(), data_path=(tmp, os.path.join(directory, f"{number}.part")))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return part

    def list_parts(self, upload: Upload) -> list[Part]:
        directory = self._dir(upload.upload_id)
        parts = []
        for name in os.listdir(directory):
            stem, _, ext = name.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                raw = json.load(handle)
            parts.append(Part(int(stem), raw["size"], raw["etag"], raw["modified_ms"]))
        return sorted(parts, key=lambda p: p.number)

    def list_uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        uploads = []
        for upload_id in os.listdir(self.root):
            path = os.path.join(self.root, upload_id, "upload.json")
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
            if raw["bucket"] == bucket and raw["key"].startswith(prefix):
                uploads.append(self.get(upload_id, bucket, raw["key"]))
        return sorted(uploads, key=lambda u: (u.key.encode(), u.started_ms))

    def abort(self, upload: Upload) -> None:
        shutil.rmtree(self._dir(upload.upload_id), ignore_errors=True)

    def plan_complete(self, upload: Upload, requested: Sequence[tuple[int, str]]
                      ) -> tuple[list[Part], bytes]:
        """Check the client's part list against the staged parts; returns the parts to
        assemble and the multipart MD5 (before the `-N`)."""
        staged = {p.number: p for p in self.list_parts(upload)}
        numbers = [n for n, _ in requested]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise InvalidPartOrder()
        chosen = []
        for number, etag in requested:
            part = staged.get(number)
            if part is None or part.etag != etag:
                raise InvalidPart(f"part {number} is missing or its ETag does not match")
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < self.part_bytes_min:
                raise EntityTooSmall(f"part {part.number} is {part.size} bytes; every part "
                                     f"but the last must be at least {self.part_bytes_min}")
        if sum(p.size for p in chosen) > self.object_bytes_max:
            raise EntityTooLarge()
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).digest()
        return chosen, digest

    async def read_parts(self, upload: Upload, parts: list[Part]) -> AsyncIterator[bytes]:
        directory = self._dir(upload.upload_id)
        loop = asyncio.get_running_loop()
        for part in parts:
            with open(os.path.join(directory, f"{part.number}.part"), "rb") as handle:
                while True:
                    chunk = await loop.run_in_executor(None, handle.read, PART_READ_BYTES)
                    if not chunk:
                        break
                    yield chunk

    def begin_complete(self, upload_id: str) -> None:
        if upload_id in self._completing:
            raise NoSuchUpload("the upload is already being completed", resource=upload_id)
        self._completing.add(upload_id)

    def end_complete(self, upload_id: str) -> None:
        self._completing.discard(upload_id)


def _write_atomic(path: str, data: bytes,
                  data_path: tuple[str, str] | None = None) -> None:
    """Write `data` to `path` via a temporary file, fsync, rename. With `data_path`
    (tmp, final), that file is renamed into place first."""
    if data_path is not None:
        os.replace(*data_path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
