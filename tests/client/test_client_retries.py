"""Retries: bounded in count and time, with backoff; SlowDown and 5xx retried, errors
mapped to petrel's classes, a non-idempotent request not repeated after it may have run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web
from clientconf import write_conf
from fakeserver import error_response, fake_server

from petrel import wire
from petrel.client import Client
from petrel.errors import (
    AccessDenied,
    InternalError,
    PreconditionFailed,
    ServiceUnavailable,
    SlowDown,
)
from petrel.transport import EndpointUnreachable, RetryPolicy

FAST_RETRY = RetryPolicy(attempts_max=4, backoff_first_s=0.01, backoff_max_s=0.05,
                         elapsed_s_max=5.0)


def _client(tmp_path: Path, endpoint: str, retry: RetryPolicy = FAST_RETRY) -> Client:
    # Batch gets through the gateway: these fake servers answer batch gets only (the
    # short-circuit path has its own tests, test_client_short_circuit.py).
    return Client(write_conf(tmp_path / "petreloss.conf", endpoint), retry=retry,
                  short_circuit=False)


def test_slowdown_twice_then_success(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n <= 2:
            return error_response(503, "SlowDown")
        return web.Response(body=b"finally", headers={"ETag": '"e"'})

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        assert client.get("s3://b/k") == b"finally"
        assert len(server.requests) == 3


def test_always_failing_is_bounded_with_a_clear_error(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error_response(503, "SlowDown")

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        started = time.monotonic()
        with pytest.raises(SlowDown, match="after 4 attempts"):
            client.get("s3://b/k")
        assert len(server.requests) == FAST_RETRY.attempts_max
        assert time.monotonic() - started < FAST_RETRY.elapsed_s_max


def test_retry_stops_at_the_time_bound(tmp_path: Path) -> None:
    slow = RetryPolicy(attempts_max=100, backoff_first_s=0.05, backoff_max_s=0.05,
                       elapsed_s_max=0.3)

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error_response(500, "InternalError")

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint, slow)
        started = time.monotonic()
        with pytest.raises(InternalError):
            client.put("s3://b/k", b"x")
        assert time.monotonic() - started < 2.0
        assert 2 <= len(server.requests) < 100


def test_non_idempotent_request_not_repeated_after_a_500(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error_response(500, "InternalError")

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        with pytest.raises(InternalError):
            client.create_bucket("s3://b")
        assert len(server.requests) == 1  # it may have been applied: not blindly repeated


def test_non_idempotent_request_retried_after_a_503(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error_response(503, "SlowDown") if n == 1 else web.Response()

    with fake_server(handler) as server:
        _client(tmp_path, server.endpoint).create_bucket("s3://b")
        assert len(server.requests) == 2


def test_errors_are_not_retried_and_are_mapped(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=403)
        if request.method == "PUT":
            return error_response(412, "PreconditionFailed")
        return error_response(404, "NoSuchKey") if n == 1 else error_response(403, "AccessDenied")

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        assert client.get("s3://b/k") is None
        with pytest.raises(AccessDenied):
            client.get("s3://b/k")
        with pytest.raises(AccessDenied):
            client.contains("s3://b/k")
        with pytest.raises(PreconditionFailed):
            client.put("s3://b/k", b"x")
        assert len(server.requests) == 4


def test_unknown_code_keeps_the_server_code(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error_response(409, "OperationAborted")

    with fake_server(handler) as server:
        with pytest.raises(Exception) as caught:
            _client(tmp_path, server.endpoint).put("s3://b/k", b"x")
        assert caught.value.code == "OperationAborted"  # type: ignore[attr-defined]
        assert caught.value.status == 409  # type: ignore[attr-defined]


def test_body_cut_short_is_retried_then_reported(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"only part of it")
        assert request.transport is not None
        request.transport.close()
        return response

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        with pytest.raises(EndpointUnreachable, match="cut short"):
            client.get("s3://b/k")
        assert len(server.requests) == FAST_RETRY.attempts_max


def test_batch_answer_cut_short_is_retried(tmp_path: Path) -> None:
    # A batch get's answer is read in pieces (its HTTP chunks): one cut inside a chunk
    # is a network failure, retried like any body cut short, never a short batch.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        keys = [frame.key for frame in wire.decode(await request.read(), wire.Kind.GET_REQUEST)]
        pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
        for key in keys:
            wire.add_found(pieces, key, 2, 0, "e", b"ok")
        pieces.append(wire.end_frame(len(keys)))
        body = b"".join(pieces)
        response = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if n == 1:  # a chunk header announcing more than is sent, then the cut
            assert request.transport is not None
            request.transport.write(f"{len(body):x}\r\n".encode() + body[:-5])
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response

    with fake_server(handler) as server:
        client = _client(tmp_path, server.endpoint)
        assert client.get_batch(["s3://b/k1", "s3://b/k2"]) == [b"ok", b"ok"]
        assert len(server.requests) == 2


def test_unreachable_endpoint_is_bounded(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = _client(tmp_path, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable, match="attempt 4 of 4") as caught:
        client.get("s3://b/k")
    assert isinstance(caught.value, ConnectionError)
    assert isinstance(caught.value, ServiceUnavailable)
    assert time.monotonic() - started < FAST_RETRY.elapsed_s_max
