"""Objects and URLs for the S3 benchmark: untimed setup uploads with boto3, and presigned
SigV4 GET/PUT URLs written one per line for wrk.

Presigning with boto3 costs ~230 us a URL here (its event machinery, not the HMAC), and a
PUT run needs a distinct key per request: 10^5-10^6 URLs. `Presigner` computes the same
query-string SigV4 (UNSIGNED-PAYLOAD, SignedHeaders=host) with the signing key derived
once, and `check_against_boto3` proves it byte-identical to
`generate_presigned_url(..., signature_version s3v4)` before any URL is used.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.s3_servers import Credentials

BUCKET = "bench"
# A URL stays valid this long (the SigV4 maximum is 7 days).
EXPIRES_S = 7 * 24 * 3600
UPLOAD_THREADS = 16
# Distinct payloads cycled through by the setup uploads (no N x size of RAM).
PAYLOAD_POOL_SIZE = 64
KEYS_PER_SHARD = 1000
_SAFE = "-_.~"


def get_key(size_bytes: int, i: int) -> str:
    """Keys read by the GET runs: `get-10240/shard-0003/obj-00003141.bin`."""
    return f"get-{size_bytes}/shard-{i // KEYS_PER_SHARD:04d}/obj-{i:08d}.bin"


def put_key(run: str, i: int) -> str:
    """Keys written by a PUT run, fresh for each run: `put-<run>/obj-00003141.bin`."""
    return f"put-{run}/shard-{i // KEYS_PER_SHARD:04d}/obj-{i:08d}.bin"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Presigner:
    """Query-string SigV4 for path-style URLs on one host, at one fixed X-Amz-Date."""

    host: str  # "127.0.0.1:PORT", exactly the Host header wrk will send
    creds: Credentials
    amz_date: str  # 20261124T015952Z
    signing_key: bytes
    expires_s: int = EXPIRES_S

    @classmethod
    def create(cls, host: str, creds: Credentials, amz_date: str | None = None,
               expires_s: int = EXPIRES_S) -> Presigner:
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        key = _hmac(("AWS4" + creds.secret_key).encode(), amz_date[:8])
        for part in (creds.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        return cls(host, creds, amz_date, key, expires_s)

    def path(self, method: str, bucket: str, key: str) -> str:
        """`/bucket/key?X-Amz-...&X-Amz-Signature=...` (no scheme or host)."""
        scope = f"{self.amz_date[:8]}/{self.creds.region}/s3/aws4_request"
        query = urllib.parse.urlencode([
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{self.creds.access_key}/{scope}"),
            ("X-Amz-Date", self.amz_date),
            ("X-Amz-Expires", str(self.expires_s)),
            ("X-Amz-SignedHeaders", "host"),
        ], quote_via=urllib.parse.quote, safe=_SAFE)
        uri = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/" + _SAFE)
        canonical = f"{method}\n{uri}\n{query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", self.amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{uri}?{query}&X-Amz-Signature={signature}"


def boto3_client(endpoint: str, creds: Credentials) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    max_pool_connections=UPLOAD_THREADS * 2,
                    retries={"max_attempts": 8, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds.access_key,
                        aws_secret_access_key=creds.secret_key, region_name=creds.region,
                        config=config)


def check_against_boto3(client: Any, host: str, creds: Credentials, bucket: str,
                        keys: Iterable[str]) -> None:
    """Raise unless Presigner reproduces boto3's presigned GET and PUT URLs exactly."""
    for key in keys:
        for method, operation in (("GET", "get_object"), ("PUT", "put_object")):
            url = client.generate_presigned_url(
                operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=EXPIRES_S)
            parts = urllib.parse.urlsplit(url)
            amz_date = urllib.parse.parse_qs(parts.query)["X-Amz-Date"][0]
            ours = Presigner.create(host, creds, amz_date).path(method, bucket, key)
            theirs = f"{parts.path}?{parts.query}"
            if ours != theirs:
                raise RuntimeError(f"presigned URL differs from boto3's:\n{ours}\n{theirs}")


def write_paths(path: str, presigner: Presigner, method: str, bucket: str,
                keys: Iterable[str]) -> int:
    count = 0
    with open(path, "w", encoding="ascii") as handle:
        for key in keys:
            handle.write(presigner.path(method, bucket, key) + "\n")
            count += 1
    return count


def payload_pool(size_bytes: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size_bytes) for _ in range(PAYLOAD_POOL_SIZE)]


def create_bucket(client: Any, bucket: str) -> None:
    """Create `bucket`, retrying while a just-started server is not ready (bounded)."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou",
                                                 "BucketAlreadyExists"):
                return
            if time.monotonic() > deadline:
                raise
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def upload(client: Any, bucket: str, size_bytes: int, count: int) -> float:
    """PUT `count` objects of `size_bytes` (keys `get_key`) with UPLOAD_THREADS threads;
    returns the seconds taken (setup, not a measurement)."""
    pool = payload_pool(size_bytes, seed=size_bytes)
    started = time.perf_counter()

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=get_key(size_bytes, i), Body=pool[i % len(pool)])

    with ThreadPoolExecutor(UPLOAD_THREADS) as executor:
        for _ in executor.map(put, range(count)):
            pass
    # Spot-check: a few objects read back with the bytes that were sent.
    for i in random.Random(count).sample(range(count), min(count, 8)):
        body = client.get_object(Bucket=bucket, Key=get_key(size_bytes, i))["Body"].read()
        if body != pool[i % len(pool)]:
            raise RuntimeError(f"{get_key(size_bytes, i)} read back wrong bytes")
    return time.perf_counter() - started
