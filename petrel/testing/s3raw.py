"""A small signed S3 client for reliability tests and harnesses: one keep-alive
HTTP/1.1 connection, requests signed with `petrel.sigv4.Signer` (the gateway's own
canonicalisation), nothing hidden (no retries, no redirects, no connection pool).

Not thread-safe: give each thread its own `S3Raw`. Every method raises `S3Failure` for
a transport failure (connection refused or reset, timeout), so a caller can tell "the
gateway answered an error" (a status) from "no answer" (an operation in an unknown
state).
"""

from __future__ import annotations

import hashlib
import http.client
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from petrel import sigv4, wire

TIMEOUT_S = 30.0
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Failure(Exception):
    """No answer: the connection failed, was reset, or timed out."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        """The S3 error code of an XML error body, if any."""
        start = self.body.find(b"<Code>")
        end = self.body.find(b"</Code>")
        if start < 0 or end < start:
            return None
        return self.body[start + 6 : end].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ListPage:
    keys: list[str]
    next_token: str | None


class S3Raw:
    def __init__(self, endpoint: str, access_key: str, secret_key: str,
                 timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"endpoint must be http://HOST:PORT, not {endpoint!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.timeout_s = timeout_s
        self.signer = sigv4.Signer(access_key, secret_key)
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> S3Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- the one request primitive ---------------------------------------------------
    def request(self, method: str, path: str, query: str = "", body: bytes = b"",
                headers: dict[str, str] | None = None,
                payload_hash: str | None = None) -> Response:
        """`path` decoded ("/bucket/a b"); `query` as on the wire. Signs and sends one
        request; raises S3Failure when no complete answer arrives."""
        return self.request_raw(method, sigv4.encode_path(path), query, body, headers,
                                payload_hash)

    def request_raw(self, method: str, raw_path: str, query: str = "", body: bytes = b"",
                    headers: dict[str, str] | None = None,
                    payload_hash: str | None = None) -> Response:
        """As `request`, with the path exactly as it goes on the wire (any percent
        escapes, including ones that are not UTF-8)."""
        given = {"Host": self.netloc, **(headers or {})}
        if body or method in ("PUT", "POST"):
            given["Content-Length"] = str(len(body))
        digest = payload_hash or hashlib.sha256(body).hexdigest()
        signed = self.signer.sign(method, raw_path, query, given, digest)
        target = raw_path + (f"?{query}" if query else "")
        # Header values go on the wire as UTF-8, the bytes the signature covers
        # (http.client would send them as Latin-1).
        wire_headers = {k: v.encode("utf-8").decode("latin-1") for k, v in signed.items()}
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._connection
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout_s)
                self._connection = connection
            try:
                connection.request(method, target, body=body, headers=wire_headers)
                answer = connection.getresponse()
                data = answer.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                self.close()
                # A kept-alive connection the server closed as idle just as the request
                # went out: it was never read, so it is sent again on a new one, once
                # (what urllib3 and botocore do).
                if not reused or attempt == 2:
                    raise S3Failure(f"{method} {target}: {exc!r}") from exc
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise S3Failure(f"{method} {target}: {exc!r}") from exc
        if answer.will_close:
            self.close()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)

    # ----- S3 operations ---------------------------------------------------------------
    def create_bucket(self, bucket: str) -> Response:
        return self.request("PUT", f"/{bucket}")

    def put(self, bucket: str, key: str, data: bytes) -> Response:
        return self.request("PUT", f"/{bucket}/{key}", body=data)

    def get(self, bucket: str, key: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", f"/{bucket}/{key}", headers=headers)

    def delete(self, bucket: str, key: str) -> Response:
        return self.request("DELETE", f"/{bucket}/{key}")

    def list_page(self, bucket: str, prefix: str = "", token: str | None = None,
                  max_keys: int = 1000) -> ListPage:
        """One ListObjectsV2 page; raises S3Failure, or RuntimeError on a non-200."""
        params = [("list-type", "2"), ("max-keys", str(max_keys))]
        if prefix:
            params.append(("prefix", prefix))
        if token is not None:
            params.append(("continuation-token", token))
        response = self.request("GET", f"/{bucket}", sigv4.encode_query(params))
        if response.status != 200:
            raise RuntimeError(f"list {bucket}: HTTP {response.status} {response.body[:300]!r}")
        root = ET.fromstring(response.body)
        keys = [element.text or "" for element in root.iter(f"{_S3_NS}Key")]
        truncated = (root.findtext(f"{_S3_NS}IsTruncated") or "false") == "true"
        token_next = root.findtext(f"{_S3_NS}NextContinuationToken") if truncated else None
        return ListPage(keys, token_next)

    def list_all(self, bucket: str, prefix: str = "", max_keys: int = 1000) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            page = self.list_page(bucket, prefix, token, max_keys)
            keys.extend(page.keys)
            if page.next_token is None:
                return keys
            token = page.next_token

    def batch_put(self, bucket: str, items: list[tuple[str, bytes]]
                  ) -> tuple[int, list[wire.Frame]]:
        """(HTTP status, one frame per item when 200). Sent UNSIGNED-PAYLOAD, as
        petrel.Client does: every frame carries its own checksum."""
        body = wire.encode_put_request([(key, data, "") for key, data in items])
        response = self.request("POST", f"/{bucket}", "batch-put", body,
                                {"Content-Type": wire.CONTENT_TYPE}, sigv4.UNSIGNED_PAYLOAD)
        if response.status != 200:
            return response.status, []
        return 200, wire.decode(response.body, wire.Kind.PUT_RESPONSE)

    def batch_get(self, bucket: str, keys: list[str]) -> tuple[int, list[wire.Frame]]:
        body = wire.encode_get_request([(key, None) for key in keys])
        response = self.request("POST", f"/{bucket}", "batch-get", body,
                                {"Content-Type": wire.CONTENT_TYPE})
        if response.status != 200:
            return response.status, []
        return 200, wire.decode(response.body, wire.Kind.GET_RESPONSE)
