"""HTTP for `petrel.Client`: one endpoint, SigV4-signed requests, bounded retries.

Contracts:

- Connections are made lazily, one pool per process and thread (a `threading.local`
  tagged with `os.getpid()`): a `Transport` built before `fork` (a DataLoader starting
  its workers) opens fresh connections in each child and never touches the parent's.
  Pickling drops the pools; they are made again on first use.
- `request` retries with exponential backoff and full jitter on connection errors and on
  500, 502, 503 and 504 (503 is what SlowDown answers), at most `RetryPolicy.attempts_max`
  tries and never starting one after `RetryPolicy.elapsed_s_max`. A request marked
  `idempotent=False` is retried only where the server cannot have applied it: the
  connection was never made, or a 503 (refused before the operation ran).
- Any other non-2xx answer raises the `petrel.errors` class of its S3 error code
  (`error_for_code`); a body-less answer (HEAD) maps by status. When retries run out the
  last error is raised: the mapped S3 error, or `EndpointUnreachable` for the network.
- `request_pieces` is `request` for a body wanted as it arrived (a batch get answer):
  the same retries, a body cut short retried like any other.
"""

from __future__ import annotations

import html
import ipaddress
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from petrel import __version__
from petrel.errors import (
    AccessDenied,
    InternalError,
    NoSuchBucket,
    NoSuchKey,
    PetrelError,
    PreconditionFailed,
    ServiceUnavailable,
    error_for_code,
)
from petrel.sigv4 import Signer, encode_path, encode_query

_Body = TypeVar("_Body")
RETRY_STATUSES = frozenset({500, 502, 503, 504})
USER_AGENT = f"petrel-client/{__version__}"
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,256})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,4096})</Message>")
_STATUS_ERRORS: dict[int, type[PetrelError]] = {
    403: AccessDenied, 412: PreconditionFailed, 500: InternalError, 503: ServiceUnavailable,
}


class EndpointUnreachable(ServiceUnavailable, ConnectionError):
    """The endpoint could not be reached (or the connection broke) on every attempt.
    Both a petrel error (code ServiceUnavailable, so batch results can carry it in an
    item's place) and a ConnectionError."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds on retrying one request."""

    # Tries in all, the first included; 1 disables retries.
    attempts_max: int = 5
    # The first backoff is drawn from [0, backoff_first_s], doubling per retry.
    backoff_first_s: float = 0.05
    backoff_max_s: float = 2.0
    # No attempt starts after this much time since the first one began.
    elapsed_s_max: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts_max <= 100:
            raise ValueError(f"attempts_max={self.attempts_max} outside [1, 100]")
        if not 0 <= self.backoff_first_s <= self.backoff_max_s <= 60:
            raise ValueError("need 0 <= backoff_first_s <= backoff_max_s <= 60")
        if not 0 <= self.elapsed_s_max <= 3600:
            raise ValueError(f"elapsed_s_max={self.elapsed_s_max} outside [0, 3600]")

    def backoff_s(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max, first * 2**(retry-1))]. `random` reseeds
        in a forked child, so workers retrying together do not sleep in lockstep."""
        ceiling = min(self.backoff_max_s, self.backoff_first_s * (2 ** (retry - 1)))
        return random.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    # Between two reads of the socket, not for the whole body.
    read_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a cluster's gateway listens, from its `host_base` ("http://host:port")."""

    url: str  # without a trailing '/'
    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, host_base: str) -> Endpoint:
        """Raises ValueError for anything but an http(s) URL without a path."""
        text = host_base.strip().rstrip("/")
        if "://" not in text:
            text = "http://" + text  # petreloss.conf files often omit the scheme
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"host_base {host_base!r} is not an http(s) URL")
        if parts.path or parts.query or parts.fragment:
            raise ValueError(f"host_base {host_base!r} must not have a path or query")
        default_port = 443 if parts.scheme == "https" else 80
        try:
            port = parts.port or default_port
        except ValueError:
            raise ValueError(f"host_base {host_base!r} has an invalid port") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        host_header = host if port == default_port else f"{host}:{port}"
        return cls(f"{parts.scheme}://{host_header}", parts.scheme, parts.hostname, port,
                   host_header)

    @property
    def is_loopback(self) -> bool:
        """Whether the host is this machine's loopback: "localhost", 127.0.0.0/8, ::1
        (a name is not resolved)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Transport:
    """Signed requests to one endpoint; thread-safe and fork-safe (see module doc)."""

    def __init__(
        self,
        endpoint: Endpoint,
        signer: Signer,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        connections_per_thread_max: int = 2,
    ) -> None:
        self.endpoint = endpoint
        self.signer = signer
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self._connections_max = connections_per_thread_max
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _pool(self) -> urllib3.HTTPConnectionPool:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            # First use in this thread, or the first in a forked child: the parent's
            # sockets are left alone (closing them here would not affect the parent,
            # but using them would interleave two processes on one connection).
            cls = (urllib3.HTTPSConnectionPool if self.endpoint.scheme == "https"
                   else urllib3.HTTPConnectionPool)
            local.pool = cls(
                self.endpoint.host, self.endpoint.port, maxsize=self._connections_max,
                block=False, retries=False,
                timeout=urllib3.Timeout(connect=self.timeouts.connect_s,
                                        read=self.timeouts.read_s),
            )
            local.pid = pid
        pool: urllib3.HTTPConnectionPool = local.pool
        return pool

    def close(self) -> None:
        """Close this thread's connections (others close when their thread ends)."""
        local = self._local
        pool = getattr(local, "pool", None)
        if pool is not None and getattr(local, "pid", None) == os.getpid():
            pool.close()
        local.__dict__.clear()  # this thread's slot only: a new pool on next use

    def url(self, path: str, query: Iterable[tuple[str, str]] = ()) -> tuple[str, str]:
        """(raw path, raw query) on the wire for a decoded path and query pairs."""
        return encode_path(path), encode_query(query)

    def request(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        payload_hash: str,
        idempotent: bool = True,
        stream: bool = False,
        key: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request (`path` decoded, e.g. "/bucket/a b"), retrying per the
        policy; returns a 2xx response, its body read unless `stream`. `key` names the
        object in errors and maps a body-less 404 to NoSuchKey (else NoSuchBucket)."""
        response, _ = self._exchange(method, path, query, headers, body, payload_hash,
                                     idempotent, key, None if stream else _read_whole)
        return response

    def request_pieces(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        payload_hash: str,
        idempotent: bool = True,
        key: str | None = None,
    ) -> list[bytes]:
        """As `request`, for a body wanted as it arrived, never joined: the chunks of a
        chunked answer, or the whole body as one piece (a long batch get answer is
        tens of MiB: a join would copy it once more, into freshly mapped pages)."""
        _, pieces = self._exchange(method, path, query, headers, body, payload_hash,
                                   idempotent, key, _read_pieces)
        assert pieces is not None
        return pieces

    def _exchange(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        headers: Mapping[str, str] | None,
        body: bytes,
        payload_hash: str,
        idempotent: bool,
        key: str | None,
        read: Callable[[urllib3.BaseHTTPResponse], _Body] | None,
    ) -> tuple[urllib3.BaseHTTPResponse, _Body | None]:
        """The retry loop of `request`: a 2xx response and what `read` made of its body
        (None and the body unread when `read` is None)."""
        raw_path, raw_query = self.url(path, query)
        target = f"{raw_path}?{raw_query}" if raw_query else raw_path
        base_headers = {"Host": self.endpoint.host_header, "User-Agent": USER_AGENT,
                        **(headers or {})}
        policy = self.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            signed = self.signer.sign(method, raw_path, raw_query, base_headers, payload_hash)
            try:
                response = self._pool().urlopen(
                    method, target, body=body or None, headers=signed, retries=False,
                    redirect=False, preload_content=False, decode_content=False,
                )
            except HTTPError as exc:
                never_sent = isinstance(exc, NewConnectionError | ConnectTimeoutError)
                if (idempotent or never_sent) and self._may_retry(attempt, started):
                    self._backoff(attempt, started)
                    continue
                raise EndpointUnreachable(
                    f"{method} {self.endpoint.url}{raw_path}: {exc} "
                    f"(attempt {attempt} of {policy.attempts_max})"
                ) from exc
            status = response.status
            if 200 <= status < 300:
                if read is None:
                    return response, None
                try:
                    return response, _read_releasing(response, read)
                except HTTPError as exc:  # the body was cut short: never passed on as data
                    if idempotent and self._may_retry(attempt, started):
                        self._backoff(attempt, started)
                        continue
                    raise EndpointUnreachable(
                        f"{method} {self.endpoint.url}{raw_path}: response body cut short: "
                        f"{exc} (attempt {attempt} of {policy.attempts_max})"
                    ) from exc
            error = self._error(response, method, path, key)
            retryable = status in RETRY_STATUSES and (idempotent or status == 503)
            if retryable and self._may_retry(attempt, started):
                self._backoff(attempt, started)
                continue
            if retryable and attempt > 1:
                error.detail = f"{error.detail} (after {attempt} attempts)"
                error.args = (error.detail,)
            raise error

    def _may_retry(self, attempt: int, started: float) -> bool:
        policy = self.retry
        return attempt < policy.attempts_max and \
            time.monotonic() - started < policy.elapsed_s_max

    def _backoff(self, attempt: int, started: float) -> None:
        left_s = self.retry.elapsed_s_max - (time.monotonic() - started)
        time.sleep(max(0.0, min(self.retry.backoff_s(attempt), left_s)))

    @staticmethod
    def _error(response: urllib3.BaseHTTPResponse, method: str, path: str,
               key: str | None) -> PetrelError:
        try:
            # Read even a HEAD's empty body: that is what frees the connection for reuse.
            body = response.read()
        except HTTPError:
            body = b""
        finally:
            response.release_conn()
        return error_from_response(response.status, body, path, key)


def _read_releasing(response: urllib3.BaseHTTPResponse,
                    read: Callable[[urllib3.BaseHTTPResponse], _Body]) -> _Body:
    try:
        return read(response)
    finally:
        response.release_conn()


def _read_whole(response: urllib3.BaseHTTPResponse) -> None:
    """Read the body into the response (`response.data`)."""
    response.read(cache_content=True)


def _read_pieces(response: urllib3.BaseHTTPResponse) -> list[bytes]:
    """The body as received: one piece per HTTP chunk (chunked), else one piece. A
    chunked body cut short raises (urllib3's ProtocolError, an HTTPError)."""
    if response.chunked:
        return [chunk for chunk in response.read_chunked(decode_content=False) if chunk]
    data = response.read()
    return [data] if data else []


def error_from_response(status: int, body: bytes, resource: str,
                        key: str | None = None) -> PetrelError:
    """The petrel error for an S3 error answer: by its XML <Code> when it has one, by
    its status otherwise (a HEAD has no body)."""
    match = _ERROR_CODE.search(body)
    if match is not None:
        code = match.group(1).decode("utf-8", "replace")
        found = _ERROR_MESSAGE.search(body)
        message = html.unescape(found.group(1).decode("utf-8", "replace")) if found else None
        cls = error_for_code(code)
        error = cls(message, resource=resource)
        if cls is PetrelError:  # a code petrel does not know: keep what the server said
            error.code, error.status = code, status
        return error
    if status == 404:
        return (NoSuchKey if key else NoSuchBucket)(resource=resource)
    by_status = _STATUS_ERRORS.get(status)
    if by_status is not None:
        return by_status(resource=resource)
    error = PetrelError(f"HTTP {status} without an S3 error body", resource=resource)
    error.status = status
    return error
