"""The S3 backend: blobs as objects in a bucket of any S3 store (SeaweedFS, MinIO, Ceph
RGW, AWS), under a key prefix.

Blob ``name`` is the object ``prefix + name``. Each protocol call is one or a few S3
requests through one botocore client, which is thread-safe; its connection pool is
sized to the callers' threads so none waits for a connection.

Integrity: every upload carries Content-MD5 (the store rejects a body damaged on the
way) and the returned ETag is compared with the MD5 computed here (for a multipart
upload, MD5 of the parts' MD5s and ``-N``), then a HEAD checks the stored size. A
multipart upload that fails is aborted, so no partial object is ever visible: S3 PUT and
CompleteMultipartUpload replace an object atomically.

Retries: one *request* that fails transiently (connection refused or reset, timeout, a
5xx, SlowDown) is retried by the client, at most `request_attempts_max` times with
exponential backoff and jitter: transport-level repair, bounded, that every S3 SDK does.
What to do once an operation has failed (retry an upload for ever, keep the local copy,
answer 503) is policy and stays above the protocol, in the store.

Outages are logged once per change of state (unreachable, reachable again), not once
per failed request, so a down store does not flood the log.

botocore is imported here and only here, when the first S3Backend is built.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from petrel.backends.base import check_blob_name
from petrel.errors import BackendError, BlobNotFound, InvalidArgument
from petrel.settings import S3BackendConfig

log = logging.getLogger("petrel.backends.s3")

_T = TypeVar("_T")
# Error codes meaning "no such object": GetObject says NoSuchKey; HEAD has no body, so
# botocore reports the bare status.
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_LIST_PAGE_KEYS = 1000
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_HASH_CHUNK_BYTES = 1024 * 1024


def _md5_base64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _file_md5(handle: IO[bytes], length: int) -> bytes:
    """MD5 of the next `length` bytes of `handle` (read in bounded chunks)."""
    md5 = hashlib.md5()
    left = length
    while left:
        chunk = handle.read(min(_HASH_CHUNK_BYTES, left))
        if not chunk:
            raise BackendError("source file shrank while it was being uploaded")
        md5.update(chunk)
        left -= len(chunk)
    return md5.digest()


class S3Backend:
    """Blobs in `config.bucket` under `config.prefix`. `threads` is how many threads
    call it at once (the store's io_threads): the connection pool is at least that."""

    def __init__(self, config: S3BackendConfig, *, threads: int = 1) -> None:
        # botocore ships no type information (no py.typed): its objects are Any here.
        from botocore.config import Config  # type: ignore[import-untyped]
        from botocore.session import get_session  # type: ignore[import-untyped]

        self.config = config
        self._prefix = config.key_prefix
        client_config = Config(
            region_name=config.region,
            signature_version="s3v4",
            max_pool_connections=max(config.connections_max, threads),
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            retries={"total_max_attempts": config.request_attempts_max, "mode": "standard"},
            s3={"addressing_style": "path" if config.path_style else "auto"},
            # Content-MD5 is sent explicitly; the newer default CRC trailers are not
            # understood by every S3 store petrel targets.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = get_session().create_client(
            "s3", endpoint_url=config.endpoint_url, aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key, config=client_config)
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
        )

        self._client_error: type[ClientError] = ClientError
        self._transport_error: type[BotoCoreError] = BotoCoreError
        self._where = f"{config.endpoint_url or 'AWS ' + config.region}/{config.bucket}"
        self._state_lock = threading.Lock()
        self._reachable = True
        self._closed = False

    @property
    def reads_are_local(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"S3Backend({self._where}/{self._prefix})"

    # ----- the request funnel: every S3 call goes through `_call` -------------------
    def _key(self, name: str) -> str:
        return self._prefix + check_blob_name(name)

    def _call(self, what: str, key: str, request: Callable[[], _T]) -> _T:
        """Run one S3 operation (the client retries transient failures inside it) and
        map its failure to petrel's errors: BlobNotFound, InvalidArgument for a range
        the object does not have, BackendError for anything else."""
        try:
            result = request()
        except self._client_error as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                self._note_reachable()
                raise BlobNotFound(f"no blob {key} in {self._where}") from exc
            if code == "InvalidRange" or status == 416:
                self._note_reachable()
                raise InvalidArgument(f"range past the end of {key}") from exc
            message = f"S3 {what} {key}: {code or status} {error.get('Message', '')}".strip()
            if status >= 500 or status == 429 or code == "SlowDown":
                self._note_unreachable(message)
            raise BackendError(message) from exc
        except self._transport_error as exc:
            message = f"S3 {what} {key}: {exc}"
            self._note_unreachable(message)
            raise BackendError(message) from exc
        self._note_reachable()
        return result

    def _note_unreachable(self, message: str) -> None:
        with self._state_lock:
            was, self._reachable = self._reachable, False
        if was:
            log.error("S3 backend %s unavailable (after %d attempts): %s; reads of "
                      "segments not on local disk fail with 503 and uploads are retried "
                      "until it is back", self._where, self.config.request_attempts_max,
                      message)
        else:
            log.debug("S3 backend still unavailable: %s", message)

    def _note_reachable(self) -> None:
        if self._reachable:
            return
        with self._state_lock:
            was, self._reachable = self._reachable, True
        if not was:
            log.warning("S3 backend %s reachable again", self._where)

    # ----- writes ------------------------------------------------------------------
    def put_file(self, name: str, path: str) -> None:
        key = self._key(name)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, also on failure
        except OSError as exc:
            raise BackendError(f"put_file source {path}: {exc}") from exc
        with handle:
            try:
                size = os.fstat(handle.fileno()).st_size
            except OSError as exc:
                raise BackendError(f"put_file source {path}: {exc}") from exc
            self._put(key, handle, size)

    def put_bytes(self, name: str, data: bytes) -> None:
        import io

        key = self._key(name)
        self._put(key, io.BytesIO(data), len(data))

    def _put(self, key: str, handle: IO[bytes], size: int) -> None:
        try:
            if size > self.config.multipart_threshold_bytes:
                etag = self._put_multipart(key, handle, size)
            else:
                etag = self._put_single(key, handle, size)
        except OSError as exc:  # reading the source
            raise BackendError(f"S3 put {key}: reading the source: {exc}") from exc
        self._verify(key, size, etag)

    def _put_single(self, key: str, handle: IO[bytes], size: int) -> str:
        """One PutObject, the body streamed from `handle` (which botocore can rewind
        for a retry). Returns the expected ETag."""
        digest = _file_md5(handle, size)
        handle.seek(0)
        response = self._call("put", key, lambda: self._client.put_object(
            Bucket=self.config.bucket, Key=key, Body=handle, ContentLength=size,
            ContentMD5=_md5_base64(digest)))
        self._check_etag(key, response.get("ETag"), digest.hex())
        return digest.hex()

    def _put_multipart(self, key: str, handle: IO[bytes], size: int) -> str:
        """Create, upload parts one at a time (one part in memory), complete; abort on
        any failure. Returns the expected ETag."""
        part_bytes = max(self.config.multipart_part_bytes, -(-size // 10_000))
        bucket = self.config.bucket
        created = self._call("create multipart upload", key,
                             lambda: self._client.create_multipart_upload(Bucket=bucket,
                                                                          Key=key))
        upload_id = created["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            digests: list[bytes] = []
            for number, offset in enumerate(range(0, size, part_bytes), 1):
                body = handle.read(min(part_bytes, size - offset))
                if len(body) != min(part_bytes, size - offset):
                    raise BackendError(f"S3 put {key}: the source shrank during upload")
                digest = hashlib.md5(body).digest()
                etag = self._upload_part(key, upload_id, number, body, digest)
                parts.append({"PartNumber": number, "ETag": etag})
                digests.append(digest)
            response = self._call("complete multipart upload", key,
                                  lambda: self._client.complete_multipart_upload(
                                      Bucket=bucket, Key=key, UploadId=upload_id,
                                      MultipartUpload={"Parts": parts}))
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=bucket, Key=key,
                                                    UploadId=upload_id)
            raise
        expected = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        self._check_etag(key, response.get("ETag"), expected)
        return expected

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytes,
                     digest: bytes) -> str:
        response = self._call(f"upload part {number} of", key, lambda: self._client.upload_part(
            Bucket=self.config.bucket, Key=key, UploadId=upload_id, PartNumber=number,
            Body=body, ContentMD5=_md5_base64(digest)))
        etag = str(response.get("ETag", ""))
        self._check_etag(key, etag, digest.hex())
        return etag

    def _check_etag(self, key: str, etag: str | None, expected: str) -> None:
        if self.config.verify_etag and (etag or "").strip('"') != expected:
            raise BackendError(f"S3 put {key}: the store answered ETag {etag}, expected "
                               f"{expected}: the bytes stored may differ from those sent")

    def _verify(self, key: str, size: int, etag: str) -> None:
        """HEAD the stored object: its size (and ETag) must be what was sent."""
        head = self._call("head", key, lambda: self._client.head_object(
            Bucket=self.config.bucket, Key=key))
        stored = int(head.get("ContentLength", -1))
        if stored != size:
            raise BackendError(f"S3 put {key}: stored {stored} bytes, sent {size}")
        self._check_etag(key, head.get("ETag"), etag)

    # ----- reads -------------------------------------------------------------------
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        key = self._key(name)
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range {offset}+{length}")
        if length == 0:
            # S3 has no empty range: check that the blob exists and is long enough.
            if offset > self._size(key):
                raise InvalidArgument(f"range {offset}+0 runs past the end of {name}")
            return b""
        byte_range = f"bytes={offset}-{offset + length - 1}"
        response = self._call("get", key, lambda: self._client.get_object(
            Bucket=self.config.bucket, Key=key, Range=byte_range))
        data = self._read_body(key, response)
        if len(data) != length:
            # A range that starts inside the object but runs past its end is answered
            # with the bytes that exist (206), not an error.
            total = str(response.get("ContentRange", "")).rpartition("/")[2]
            if total.isdigit() and offset + length > int(total):
                raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
            raise BackendError(f"S3 get {key}: {len(data)} bytes for range {byte_range}")
        return data

    def _read_body(self, key: str, response: dict[str, Any]) -> bytes:
        body = response["Body"]
        try:
            return bytes(self._call("read body of", key, body.read))
        finally:
            body.close()

    def get_file(self, name: str, path: str) -> None:
        key = self._key(name)
        response = self._call("get", key, lambda: self._client.get_object(
            Bucket=self.config.bucket, Key=key))
        expected = int(response.get("ContentLength", -1))
        body = response["Body"]
        # Written beside `path` and renamed over it: a failure leaves `path` as it was.
        partial = f"{path}.{uuid.uuid4().hex}.part"
        try:
            written = 0
            with open(partial, "wb") as handle:
                for chunk in body.iter_chunks(_DOWNLOAD_CHUNK_BYTES):
                    handle.write(chunk)
                    written += len(chunk)
            if written != expected:
                raise BackendError(f"S3 get {key}: {written} bytes, expected {expected}")
            os.replace(partial, path)
        except OSError as exc:
            raise BackendError(f"S3 get {key} into {path}: {exc}") from exc
        except self._transport_error as exc:  # the body stream broke off
            self._note_unreachable(str(exc))
            raise BackendError(f"S3 get {key}: {exc}") from exc
        finally:
            body.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)

    def size(self, name: str) -> int:
        return self._size(self._key(name))

    def _size(self, key: str) -> int:
        head = self._call("head", key, lambda: self._client.head_object(
            Bucket=self.config.bucket, Key=key))
        return int(head["ContentLength"])

    # ----- delete and list ---------------------------------------------------------
    def delete(self, name: str) -> None:
        key = self._key(name)
        # S3 answers 204 for a missing key too: idempotent by nature.
        self._call("delete", key, lambda: self._client.delete_object(
            Bucket=self.config.bucket, Key=key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """All pages are fetched before the first name is returned, and sorted: S3
        promises UTF-8 binary order, but stores backed by a directory tree (SeaweedFS's
        filer) list directory by directory ("a/b" before "a-c"). Petrel's namespaces
        are segments (thousands) and large objects; names that are not valid blob names
        (directory markers other tools made) are skipped."""
        names: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.config.bucket, Prefix=self._prefix + prefix,
                                   PaginationConfig={"PageSize": _LIST_PAGE_KEYS})
        start = len(self._prefix)
        iterator = iter(pages)
        while True:
            page = self._call("list", self._prefix + prefix,
                              lambda: next(iterator, None))
            if page is None:
                break
            for item in page.get("Contents", []):
                name = str(item["Key"])[start:]
                try:
                    names.append(check_blob_name(name))
                except InvalidArgument:
                    continue
        return iter(sorted(names, key=str.encode))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
