"""Hostile input against a live gateway (issue 9, item 4). Each case has a defined answer,
and after each the gateway still serves a normal request:

* keys with `..`, `.`, `/` runs, a leading `/`: stored and listed verbatim, never
  normalised, never a file outside the data directory; a NUL in a key; invalid UTF-8 in
  the path (percent-escaped or raw bytes): 400;
* a request that is slow to send its headers: closed or answered within a bound;
* 2000 connections open at once: a normal request is still served;
* a 10 GB Content-Length announced (PutObject, batch put, DeleteObjects): refused at
  once, before any body is read, without the gateway's memory growing;
* a bucket of 50,000 keys listed page by page with the gateway's RSS bounded
  (the million-key version: `python -m bench.list_million`).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from relsupport import ACCESS_KEY, SECRET_KEY, serves

from petrel import sigv4, wire
from petrel.testing.bigbucket import fill, page_all
from petrel.testing.gateway import Gateway
from petrel.testing.procstat import open_fds, rss_bytes
from petrel.testing.s3raw import S3Raw

MiB = 1024 * 1024


def raw_exchange(gateway: Gateway, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send bytes on a fresh connection; what comes back before the server closes or
    goes quiet for `timeout_s`."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return received


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split()[1])


# ----- keys ------------------------------------------------------------------------------
DOTTED_KEYS = ["..", ".", "../escape", "a/../b", "a/./b", "./x", "a//b///c", "/lead",
               "//double", "trail/", "../../../../../../tmp/petrel-escape", "%2e%2e/x"]


def test_dot_and_slash_keys_are_stored_verbatim(gateway: Gateway, s3: S3Raw, bucket: str,
                                                tmp_path: Path) -> None:
    bodies = {key: f"body of {key}".encode() for key in DOTTED_KEYS}
    bodies["../big-escape"] = os.urandom(100_000)  # over the pack threshold: stored whole
    for key, body in bodies.items():
        response = s3.put(bucket, key, body)
        assert response.status == 200, (key, response.status, response.body)
    for key, body in bodies.items():
        response = s3.get(bucket, key)
        assert (response.status, response.body) == (200, body), key
    assert sorted(s3.list_all(bucket)) == sorted(bodies)
    # A key is never a file name: nothing named after one appeared anywhere.
    root = Path(gateway.data_dir).parent
    for directory in (root, Path("/tmp")):
        for path in directory.rglob("*escape*") if directory == root else \
                directory.glob("petrel-escape*"):
            pytest.fail(f"a key became a file: {path}")


def test_nul_in_key(s3: S3Raw, bucket: str) -> None:
    response = s3.request_raw("PUT", f"/{bucket}/a%00b", body=b"nul")
    assert response.status in (200, 400), response.body
    if response.status == 200:  # stored: then exactly that key, round trip
        got = s3.request_raw("GET", f"/{bucket}/a%00b")
        assert (got.status, got.body) == (200, b"nul")
        # XML 1.0 cannot carry a NUL: clients list such keys with encoding-type=url.
        listed = s3.request("GET", f"/{bucket}", "encoding-type=url&list-type=2")
        assert listed.status == 200 and b"<Key>a%00b</Key>" in listed.body, listed.body
    else:
        assert response.code in ("InvalidArgument", "InvalidRequest"), response.body


@pytest.mark.parametrize("raw_key", ["%FF%FE", "ok/%C3", "%ED%A0%80", "%C0%AF"])
def test_invalid_utf8_percent_escaped_key(s3: S3Raw, bucket: str, raw_key: str) -> None:
    for method in ("PUT", "GET", "DELETE"):
        body = b"x" if method == "PUT" else b""
        response = s3.request_raw(method, f"/{bucket}/{raw_key}", body=body)
        assert response.status == 400, (method, raw_key, response.status, response.body)
        assert response.code == "InvalidArgument", response.body
    assert s3.list_all(bucket) == []


def test_invalid_utf8_raw_bytes_in_request_line(gateway: Gateway, bucket: str) -> None:
    for target in (f"/{bucket}/\xff\xfe".encode("latin-1"), b"/\xc3/x", b"/\x00/k"):
        answer = raw_exchange(gateway, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer == b"" or 400 <= status_of(answer) < 500, answer[:300]
    assert serves(gateway)


# ----- slow and many connections -------------------------------------------------------
SLOW_HEADERS_BOUND_S = 6.0


def test_slow_headers_are_cut_off(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=1.0) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = time.monotonic() + SLOW_HEADERS_BOUND_S
        outcome = "open"
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")  # one byte a second: never a complete header
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                outcome = "reset"
                break
            outcome = "answered" if data else "closed"
            break
    assert serves(gateway)
    assert outcome != "open", f"still open after {SLOW_HEADERS_BOUND_S} s"


def test_two_thousand_connections(gateway: Gateway) -> None:
    sockets: list[socket.socket] = []
    fds_before = open_fds(gateway.process.pid)
    try:
        for i in range(2000):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            if i % 2:  # half idle, half with an unfinished request
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        started = time.monotonic()
        assert serves(gateway)
        assert time.monotonic() - started < 10
    finally:
        for sock in sockets:
            sock.close()
    assert serves(gateway)
    deadline = time.monotonic() + 10  # the closed connections' descriptors are released
    while open_fds(gateway.process.pid) > fds_before + 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds(gateway.process.pid) <= fds_before + 50


# ----- announced sizes ---------------------------------------------------------------------
TEN_GB = 10 * 1000**3


def _signed_head(gateway: Gateway, method: str, path: str, query: str,
                 headers: dict[str, str]) -> bytes:
    signer = sigv4.Signer(ACCESS_KEY, SECRET_KEY)
    given = {"Host": f"127.0.0.1:{gateway.port}", **headers}
    signed = signer.sign(method, path, query, given, sigv4.UNSIGNED_PAYLOAD)
    target = path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in signed.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("operation", [
    "put_object",
    "batch_put", "delete_objects"])
def test_ten_gigabyte_content_length_refused_fast(gateway: Gateway, bucket: str,
                                                  operation: str) -> None:
    path, query, extra = {
        "put_object": (f"/{bucket}/huge", "", {}),
        "batch_put": (f"/{bucket}", "batch-put", {"Content-Type": wire.CONTENT_TYPE}),
        "delete_objects": (f"/{bucket}", "delete", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
    }[operation]
    head = _signed_head(gateway, "PUT" if operation == "put_object" else "POST", path, query,
                        {"Content-Length": str(TEN_GB), **extra})
    rss_before = rss_bytes(gateway.process.pid)
    started = time.monotonic()
    answer = raw_exchange(gateway, head + b"x" * 65536, timeout_s=6)
    elapsed = time.monotonic() - started
    assert answer, "no answer to a 10 GB Content-Length"
    assert status_of(answer) in (400, 413), answer[:500]
    assert b"EntityTooLarge" in answer or b"InvalidRequest" in answer or \
        b"MaxMessageLengthExceeded" in answer, answer[:500]
    assert elapsed < 5, f"took {elapsed:.1f} s to refuse"
    assert rss_bytes(gateway.process.pid) - rss_before < 64 * MiB
    assert serves(gateway)


def test_non_decimal_digit_lengths(s3: S3Raw, bucket: str) -> None:
    response = s3.request("PUT", f"/{bucket}/k", body=b"4\r\nbody\r\n0\r\n\r\n",
                          headers={"Content-Encoding": "aws-chunked",
                                   "x-amz-decoded-content-length": "²"},
                          payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert response.status == 400, (response.status, response.body)


# ----- a big listing, paged ---------------------------------------------------------------
LISTING_KEYS = int(os.environ.get("PETREL_LISTING_KEYS", "50000"))


def test_large_listing_pages_with_bounded_memory(gateway: Gateway, s3: S3Raw,
                                                 bucket: str) -> None:
    fill(s3, bucket, LISTING_KEYS)
    run = page_all(s3, bucket, gateway.process.pid, LISTING_KEYS, max_keys=1000)
    assert run.in_order and run.keys == LISTING_KEYS, run
    assert run.pages == -(-LISTING_KEYS // 1000)
    assert run.rss_growth_bytes < 48 * MiB, run
    # A max-keys above S3's 1000 is clamped, never a bigger page.
    page = s3.list_page(bucket, max_keys=1_000_000)
    assert len(page.keys) == 1000 and page.next_token is not None
    assert serves(gateway)
