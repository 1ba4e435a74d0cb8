"""Signed raw HTTP requests for tests that must send what no well-behaved client sends
(short bodies, truncated streams, bad XML): botocore signs, a plain socket sends."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import quote

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ACCESS_KEY = "PKTESTACCESSKEY00001"
SECRET_KEY = "test-secret-key-0123456789abcdefghijklmn"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        match = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return match.group(1).decode() if match else None


def sign(method: str, url: str, access_key: str, secret_key: str,
         headers: dict[str, str] | None = None, payload_hash: str | None = None,
         body: bytes = b"") -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer = _FixedPayloadAuth(Credentials(access_key, secret_key), "s3", "us-east-1")
    signer.payload_hash = payload_hash
    signer.add_auth(request)
    return dict(request.headers.items())


class _FixedPayloadAuth(S3SigV4Auth):
    """botocore's signer, with x-amz-content-sha256 set to what the test says."""

    payload_hash: str | None = None

    def payload(self, request: AWSRequest) -> str:
        if self.payload_hash is not None:
            return self.payload_hash
        return str(super().payload(request))


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"",
         *, shutdown_write: bool = False, timeout_s: float = 10.0) -> RawResponse:
    """Send exactly these bytes (Content-Length as given in `headers`), optionally
    half-close the connection, and read one response."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head + body)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        return _read_response(sock, method)


def _read_response(sock: socket.socket, method: str) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if method == "HEAD":
        length = 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


def object_path(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"


def delete_bucket_fully(s3, name: str) -> None:  # type: ignore[no-untyped-def]
    """Empty a bucket (objects and multipart uploads) and delete it, with boto3."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=name)


def make_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                **config: object):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1},
                         "signature_version": "s3v4", **config}))  # type: ignore[arg-type]
