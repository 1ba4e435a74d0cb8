"""`petrel.Client`: a drop-in for SenseTime's `petrel_client.client.Client`, plus batches.

URLs are `[cluster:]s3://bucket/key`; clusters come from an ini file (`~/petreloss.conf`
by default, docs/client.md):

    [DEFAULT]
    default_cluster = local
    [local]
    host_base = http://127.0.0.1:9000
    access_key = ...
    secret_key = ...

Semantics kept from petrel_client: `get` of a missing object (or bucket) returns None;
`put` returns the number of bytes written; `list` yields names relative to the directory,
sub-directories with a trailing '/'; `get_file_iterator` yields ("bucket/key", info).
Keyword arguments petrel_client takes (`no_cache`, `update_cache`, `enable_etag`,
`enable_stream`, `enable_mc`, ...) are accepted; `enable_stream` is honoured, the cache
ones are ignored (this client keeps no cache of its own).

The client is a light handle, safe to share between threads and to use after `fork`:
connections are made per process and thread (petrel/transport.py). Errors are the
`petrel.errors` classes of the S3 error codes; a bad URL or configuration raises
`InvalidUrl` or `ConfigError` (both ValueError).
"""

from __future__ import annotations

import builtins
import configparser
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, cast
from urllib.parse import unquote

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
import urllib3

from petrel import allocator, shortcircuit, wire
from petrel.errors import (
    InternalError,
    MalformedBatch,
    NoSuchBucket,
    NoSuchKey,
    PetrelError,
    error_for_code,
)
from petrel.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer
from petrel.transport import Endpoint, RetryPolicy, Timeouts, Transport

DEFAULT_CONF_PATH = "~/petreloss.conf"
log = logging.getLogger("petrel.client")
# Items per batch request. The gateway takes up to 1000 items and 256 MiB per batch;
# 256 keeps a response of 10 KiB objects near 2.5 MiB, one read of the socket's worth.
BATCH_SIZE = 256
BATCH_SIZE_MAX = 1000
# Bytes of object data per batch put request (the gateway's limit is 256 MiB).
BATCH_PUT_BYTES_MAX = 64 * 1024 * 1024
# Batch requests issued at once by one call (threads of the client's pool).
BATCH_THREADS = 4
LIST_PAGE_KEYS = 1000
PRESIGN_METHODS = {"get_object": "GET", "put_object": "PUT", "head_object": "HEAD",
                   "delete_object": "DELETE"}

_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"
SHORT_CIRCUIT_MODES = ("auto", "true", "false")
# After a batch locate that found no record in a local file, batch gets skip the locate
# for this long.
LOCAL_READS_PAUSE_S = 30.0
# What a gateway without batch locate answers it with (an older petrel gateway:
# MethodNotAllowed; a malformed answer: MalformedBatch): short-circuit reads go off.
_LOCATE_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "InvalidArgument",
                                 "MalformedBatch"})

GetResult = bytes | None | PetrelError
Content = bytes | bytearray | memoryview | str | IO[bytes] | IO[str]


class ConfigError(ValueError):
    """The configuration file is missing or does not define what a URL asks for."""


class InvalidUrl(ValueError):
    """Not a `[cluster:]s3://bucket/key` URL, or one without the part an operation needs."""


@dataclass(frozen=True, slots=True)
class Location:
    cluster: str
    bucket: str
    key: str

    @property
    def path(self) -> str:
        """The decoded request path: "/bucket/key"."""
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    host_base: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    # Short-circuit reads (petrel.shortcircuit): "auto" (when host_base is a loopback
    # address), "true" or "false".
    short_circuit: str = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    default_cluster: str | None
    clusters: dict[str, ClusterConfig]

    @classmethod
    def load(cls, conf_path: str | os.PathLike[str] | None = None) -> Config:
        """Read a petreloss.conf. Raises ConfigError if it is missing or unreadable.
        Sections without a host_base (petrel_client's `[mc]`, ...) are not clusters."""
        path = os.path.expanduser(os.fspath(conf_path or DEFAULT_CONF_PATH))
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except FileNotFoundError:
            raise ConfigError(f"petrel config {path!r} not found (see docs/client.md)") from None
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"petrel config {path!r} cannot be read: {exc}") from None
        clusters = {}
        for name in parser.sections():
            section = parser[name]
            if "host_base" not in section:
                continue
            for option in ("access_key", "secret_key"):
                if not section.get(option):
                    raise ConfigError(f"cluster [{name}] in {path!r} has no {option}")
            short_circuit = section.get("short_circuit", "auto").strip().lower()
            if short_circuit not in SHORT_CIRCUIT_MODES:
                raise ConfigError(f"cluster [{name}] in {path!r}: short_circuit must be "
                                  f"auto, true or false, not {short_circuit!r}")
            clusters[name] = ClusterConfig(
                name, section["host_base"], section["access_key"], section["secret_key"],
                section.get("region", "us-east-1"), short_circuit)
        default = parser.defaults().get("default_cluster") or None
        return cls(path, default, clusters)

    def cluster(self, name: str | None) -> ClusterConfig:
        if name is None:
            if self.default_cluster is None:
                raise ConfigError(f"the URL names no cluster and {self.path!r} sets no "
                                  "default_cluster in [DEFAULT]")
            name = self.default_cluster
        found = self.clusters.get(name)
        if found is None:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise ConfigError(f"cluster {name!r} is not in {self.path!r} (clusters: {known})")
        return found


def load_cluster(conf_path: str | os.PathLike[str] | None = None,
                 name: str | None = None) -> ClusterConfig:
    """One cluster's settings (`name`, or the default cluster) from a petreloss.conf;
    raises ConfigError."""
    return Config.load(conf_path).cluster(name)


def parse_url(url: str) -> tuple[str | None, str, str]:
    """(cluster or None, bucket, key) of `[cluster:]s3://bucket/key`; raises InvalidUrl."""
    # String methods, not a regex: a batch parses every URL it is given (~0.3 us each).
    if not isinstance(url, str):
        raise InvalidUrl(f"{url!r} is not a [cluster:]s3://bucket/key URL")
    head, sep, rest = url.partition("s3://")
    if not sep or (head and (head[-1] != ":" or ":" in head[:-1] or "/" in head
                             or len(head) == 1)):
        raise InvalidUrl(f"{url!r} is not a [cluster:]s3://bucket/key URL")
    bucket, _, key = rest.partition("/")
    return head[:-1] or None, bucket, key


class StreamingBody:
    """What `get(url, enable_stream=True)` returns, as botocore's StreamingBody does:
    `read`, `iter_chunks`, `iter_lines`, `close`; the connection is released at the end."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def read(self, amt: int | None = None) -> bytes:
        data = self._response.read(amt)
        if amt is None or not data:
            self._response.release_conn()
        return data

    def iter_chunks(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

    def iter_lines(self, chunk_size: int = 64 * 1024, keepends: bool = False) -> Iterator[bytes]:
        pending = b""
        for chunk in self.iter_chunks(chunk_size):
            lines = (pending + chunk).splitlines(True)
            pending = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
            yield from (line if keepends else line.rstrip(b"\r\n") for line in lines)
        if pending:
            yield pending

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_chunks()

    def close(self) -> None:
        self._response.release_conn()

    def __enter__(self) -> StreamingBody:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Client:
    """A petrel_client-compatible client (see the module docstring).

    `batch_size` (items per batch request, at most 1000), `batch_threads` (batch
    requests in flight per call), `retry`, `timeouts` and `short_circuit` (read batch
    gets' records from the gateway's segment files when on its machine: True, False,
    or None for each cluster's `short_circuit` setting; petrel.shortcircuit) are this
    client's own arguments; any other keyword argument is accepted and ignored, as petrel_client
    callers pass options this client has no use for (`enable_mc`, `boto`, ...).
    """

    def __init__(
        self,
        conf_path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        batch_threads: int = BATCH_THREADS,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        short_circuit: bool | None = None,
        **kwargs: object,
    ) -> None:
        if not 1 <= batch_size <= BATCH_SIZE_MAX:
            raise ValueError(f"batch_size={batch_size} outside [1, {BATCH_SIZE_MAX}]")
        if not 1 <= batch_threads <= 64:
            raise ValueError(f"batch_threads={batch_threads} outside [1, 64]")
        self.config = Config.load(conf_path)
        self.batch_size = batch_size
        self.batch_threads = batch_threads
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.short_circuit = short_circuit
        # Batches allocate and free thousands of payloads at once: keep the freed heap
        # for the next batch (petrel.allocator; PETREL_MALLOC_TUNING=0 turns it off).
        allocator.tune()
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._transports: dict[str, Transport] = {}
        self._executor: tuple[int, ThreadPoolExecutor] | None = None
        self._in_worker = threading.local()
        self._resolved: dict[str | None, str] = {}
        # Per cluster: whether batch gets read records from local files (decided on
        # first use; turned off for good if it cannot work from this process), and
        # until when (time.monotonic) they are paused: nothing was local last time.
        self._local_reads: dict[str, bool] = {}
        self._local_paused_until: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        kept = ("config", "batch_size", "batch_threads", "retry", "timeouts",
                "short_circuit")
        return {name: self.__dict__[name] for name in kept}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def __repr__(self) -> str:
        return f"Client({self.config.path!r}, clusters={sorted(self.config.clusters)})"

    def close(self) -> None:
        """Stop this process's batch threads and close the calling thread's connections;
        the client stays usable (both are made again on next use)."""
        with self._lock:
            executor, self._executor = self._executor, None
            transports = list(self._transports.values())
        if executor is not None and executor[0] == os.getpid():
            executor[1].shutdown(wait=False)
        for transport in transports:
            transport.close()

    # ----- plumbing ------------------------------------------------------------------------
    def _locate(self, url: str, *, need_bucket: bool = True, need_key: bool = False) -> Location:
        cluster, bucket, key = parse_url(url)
        if need_bucket and not bucket:
            raise InvalidUrl(f"{url!r} names no bucket")
        if need_key and not key:
            raise InvalidUrl(f"{url!r} names no object key")
        return Location(self._cluster_name(cluster), bucket, key)

    def _cluster_name(self, cluster: str | None) -> str:
        """The configured name a URL's cluster part resolves to; raises ConfigError."""
        name = self._resolved.get(cluster)
        if name is None:
            name = self._resolved[cluster] = self.config.cluster(cluster).name
        return name

    def _transport(self, cluster: str) -> Transport:
        transport = self._transports.get(cluster)
        if transport is None:
            conf = self.config.cluster(cluster)
            try:
                endpoint = Endpoint.parse(conf.host_base)
            except ValueError as exc:
                raise ConfigError(f"cluster [{cluster}] in {self.config.path!r}: {exc}") from None
            signer = Signer(conf.access_key, conf.secret_key, conf.region)
            with self._lock:
                transport = self._transports.setdefault(
                    cluster, Transport(endpoint, signer, self.retry, self.timeouts))
        return transport

    def _request(self, method: str, loc: Location, query: Iterable[tuple[str, str]] = (),
                 **kwargs: Any) -> urllib3.BaseHTTPResponse:
        kwargs.setdefault("payload_hash", EMPTY_SHA256)
        return self._transport(loc.cluster).request(method, loc.path, query,
                                                    key=loc.key or None, **kwargs)

    # ----- objects -------------------------------------------------------------------------
    def get_with_info(self, url: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """(data, info): data is bytes, a StreamingBody with `enable_stream=True`, or
        None when the object or its bucket does not exist (info is then {}). info has
        etag, size, last_modified, content_type."""
        loc = self._locate(url, need_key=True)
        stream = bool(kwargs.get("enable_stream"))
        try:
            response = self._request("GET", loc, stream=stream)
        except (NoSuchKey, NoSuchBucket):
            return None, {}
        info = _object_info(response.headers)
        return (StreamingBody(response) if stream else response.data), info

    def get(self, url: str, **kwargs: Any) -> Any:
        """The object's bytes (a StreamingBody with `enable_stream=True`), or None when
        the object or bucket does not exist."""
        return self.get_with_info(url, **kwargs)[0]

    Get = get

    def put_with_info(self, url: str, content: Content,
                      **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Store `content` (bytes, str as UTF-8, or a file-like object, read whole);
        (bytes written, {"etag": ...}). The body is signed with its SHA-256."""
        loc = self._locate(url, need_key=True)
        data = _as_bytes(content)
        response = self._request("PUT", loc, body=data,
                                 payload_hash=hashlib.sha256(data).hexdigest())
        return len(data), {"etag": response.headers.get("ETag", "").strip('"')}

    def put(self, url: str, content: Content, **kwargs: Any) -> int:
        """Store `content`; returns the number of bytes written, as petrel_client does."""
        return self.put_with_info(url, content, **kwargs)[0]

    def contains(self, url: str, **kwargs: Any) -> bool:
        """Whether an object exists at `url` (a "directory" is not an object: see isdir)."""
        loc = self._locate(url)
        if not loc.key:
            return False
        try:
            self._request("HEAD", loc)
        except (NoSuchKey, NoSuchBucket):
            return False
        return True

    def size(self, url: str, **kwargs: Any) -> int:
        """The object's size in bytes; raises NoSuchKey when it does not exist."""
        response = self._request("HEAD", self._locate(url, need_key=True))
        return int(response.headers.get("Content-Length", "0"))

    def delete(self, url: str, **kwargs: Any) -> None:
        """Delete the object (nothing happens if it does not exist, as in S3)."""
        self._request("DELETE", self._locate(url, need_key=True))

    def create_bucket(self, url: str, **kwargs: Any) -> None:
        """Create the bucket `url` names; raises BucketAlreadyOwnedByYou if it exists."""
        loc = self._locate(url)
        self._request("PUT", Location(loc.cluster, loc.bucket, ""), idempotent=False)

    def generate_presigned_url(self, url: str, client_method: str = "get_object",
                               expires_in: int = 3600) -> str:
        """A URL that performs `client_method` (get_object, put_object, head_object,
        delete_object) without credentials until `expires_in` seconds from now."""
        method = PRESIGN_METHODS.get(client_method)
        if method is None:
            raise ValueError(f"client_method {client_method!r} is not one of "
                             f"{', '.join(PRESIGN_METHODS)}")
        loc = self._locate(url, need_key=True)
        transport = self._transport(loc.cluster)
        raw_path, _ = transport.url(loc.path)
        query = transport.signer.presign(method, transport.endpoint.host_header, raw_path,
                                         expires_s=int(expires_in))
        return f"{transport.endpoint.url}{raw_path}?{query}"

    # ----- listing -------------------------------------------------------------------------
    def isdir(self, url: str, **kwargs: Any) -> bool:
        """Whether any object exists under `url` + '/' (False for a missing bucket)."""
        loc = self._locate(url)
        prefix = _dir_prefix(loc.key)
        try:
            page = self._list_page(loc, prefix, None, None, 1)
        except NoSuchBucket:
            return False
        return bool(page.objects or page.prefixes)

    def list(self, url: str, **kwargs: Any) -> Iterator[str]:
        """Lazily, the names in the directory `url`, relative to it; sub-directories end
        with '/'. Per page of 1000, sub-directories come before objects (as petrel_client
        yields them). `s3://` lists the buckets ("name/"). Raises NoSuchBucket."""
        loc = self._locate(url, need_bucket=False)
        if not loc.bucket:
            yield from (f"{name}/" for name in self._list_buckets(loc.cluster))
            return
        prefix = _dir_prefix(loc.key)
        token: str | None = None
        while True:
            page = self._list_page(loc, prefix, "/", token, LIST_PAGE_KEYS)
            yield from (name[len(prefix):] for name in page.prefixes)
            yield from (listed.key[len(prefix):] for listed in page.objects)
            token = page.next_token
            if token is None:
                return

    def get_file_iterator(self, url: str, **kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """Lazily, ("bucket/key", info) for every object whose key starts with the URL's
        key (all levels). info has Key, Size, ETag, LastModified (a datetime), as in
        boto's listing. Raises NoSuchBucket."""
        loc = self._locate(url)
        token: str | None = None
        while True:
            page = self._list_page(loc, loc.key, None, token, LIST_PAGE_KEYS)
            yield from ((f"{loc.bucket}/{listed.key}",
                         {"Key": listed.key, "Size": listed.size, "ETag": f'"{listed.etag}"',
                          "LastModified": listed.last_modified})
                        for listed in page.objects)
            token = page.next_token
            if token is None:
                return

    def _list_page(self, loc: Location, prefix: str, delimiter: str | None,
                   token: str | None, max_keys: int) -> ListPage:
        query = [("list-type", "2"), ("encoding-type", "url"), ("prefix", prefix),
                 ("max-keys", str(max_keys))]
        if delimiter is not None:
            query.append(("delimiter", delimiter))
        if token is not None:
            query.append(("continuation-token", token))
        response = self._request("GET", Location(loc.cluster, loc.bucket, ""), query)
        return parse_list_page(response.data)

    def _list_buckets(self, cluster: str) -> builtins.list[str]:
        response = self._transport(cluster).request("GET", "/", payload_hash=EMPTY_SHA256)
        root = SafeET.fromstring(response.data)
        return [node.text or "" for node in root.iter(f"{_S3}Name")]

    # ----- batches -------------------------------------------------------------------------
    def get_batch(self, urls: Sequence[str],
                  ranges: Sequence[tuple[int, int | None] | None] | None = None
                  ) -> builtins.list[bytes | None]:
        """The objects' bytes in the order of `urls`, None where an object (or its
        bucket) is missing; raises the first other error, in `urls` order. `ranges`,
        if given, holds a (start, length or None) byte range or None per URL."""
        results = self.fetch_batch(urls, ranges)
        for result in results:
            if isinstance(result, PetrelError):
                raise result
        return results  # type: ignore[return-value]  # no error left in it

    def fetch_batch(self, urls: Sequence[str],
                    ranges: Sequence[tuple[int, int | None] | None] | None = None
                    ) -> builtins.list[GetResult]:
        """As get_batch, but every failure is returned in its item's place instead of
        raised: the error of that item, or of its whole request (a network failure is
        ServiceUnavailable-coded `petrel.transport.EndpointUnreachable`). Raises only for
        a bad URL or configuration. URLs may span clusters and buckets: one request per
        (cluster, bucket) and `batch_size` items, `batch_threads` in flight."""
        if ranges is not None and len(ranges) != len(urls):
            raise ValueError(f"{len(ranges)} ranges for {len(urls)} urls")
        locs = self._batch_items(urls)
        results: builtins.list[GetResult] = [None] * len(locs)
        chunks = _chunks(locs, [1] * len(locs), self.batch_size, None)
        requests = [(locs[chunk[0]], [(locs[i][2], None if ranges is None else ranges[i])
                                      for i in chunk]) for chunk in chunks]

        def start(request: _ChunkRequest) -> builtins.list[GetResult] | _Located:
            return self._start_get_chunk(*request)

        if len(chunks) <= 1 or self.batch_threads == 1 or getattr(self._in_worker, "on", False):
            started: Iterable[builtins.list[GetResult] | _Located] = map(start, requests)
        else:
            # The requests run in the pool; records located in local files are read
            # here, in order, while the pool's next requests are answered.
            started = self._executor_here().map(start, requests)
        for chunk, request, answer in zip(chunks, requests, started, strict=True):
            chunk_results = self._finish_get_chunk(*request, answer)
            for i, result in zip(chunk, chunk_results, strict=True):
                results[i] = result
        return results

    def put_batch(self, items: Iterable[tuple[str, Content]]) -> builtins.list[str]:
        """Store many objects with one request per (cluster, bucket) and `batch_size`
        items (at most 64 MiB of data); returns their ETags in `items` order. Raises the
        first per-item or per-request error, in `items` order, after every request has
        run: the other objects, in its request and others, may have been stored."""
        given = list(items)
        locs = self._batch_items(url for url, _ in given)
        datas = [_as_bytes(data) for _, data in given]
        results: builtins.list[str | PetrelError] = [""] * len(datas)

        def run(chunk: builtins.list[int]) -> None:
            body = [(locs[i][2], datas[i], "") for i in chunk]
            for i, result in zip(chunk, self._batch_put_chunk(locs[chunk[0]], body),
                                 strict=True):
                results[i] = result

        sizes = [len(data) for data in datas]
        self._run_chunks(run, _chunks(locs, sizes, self.batch_size, BATCH_PUT_BYTES_MAX))
        for result in results:
            if isinstance(result, PetrelError):
                raise result
        return results  # type: ignore[return-value]  # only ETags left

    def _batch_items(self, urls: Iterable[str]) -> builtins.list[tuple[str, str, str]]:
        """(cluster name, bucket, key) of each batch URL: plain tuples, as batches make
        one per item; each cluster's name is resolved once per call."""
        names: dict[str | None, str] = {}
        locs: builtins.list[tuple[str, str, str]] = []
        append = locs.append
        for url in urls:
            cluster, bucket, key = parse_url(url)
            if not bucket or not key:
                raise InvalidUrl(f"{url!r} names no {'object key' if bucket else 'bucket'}")
            name = names.get(cluster)
            if name is None:
                name = names[cluster] = self._cluster_name(cluster)
            append((name, bucket, key))
        return locs

    def _run_chunks(self, run: Callable[[builtins.list[int]], None],
                    chunks: builtins.list[builtins.list[int]]) -> None:
        if len(chunks) <= 1 or self.batch_threads == 1 or getattr(self._in_worker, "on", False):
            for chunk in chunks:
                run(chunk)
            return
        for _ in self._executor_here().map(run, chunks):
            pass  # re-raises what a chunk raised

    def _executor_here(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._executor[0] != os.getpid():
                # The parent's threads do not exist in a forked child: a pool of its own.
                pool = ThreadPoolExecutor(self.batch_threads, "petrel-batch",
                                          initializer=self._mark_worker)
                self._executor = (os.getpid(), pool)
            return self._executor[1]

    def _mark_worker(self) -> None:
        # A batch call made from a batch thread runs its chunks inline: waiting on the
        # pool from inside it could deadlock once every thread waits.
        self._in_worker.on = True

    def _start_get_chunk(self, where: tuple[str, str, str], items: builtins.list[_Item]
                         ) -> builtins.list[GetResult] | _Located:
        """The request of one chunk of a batch get: its results (through the gateway),
        or where its records are (a batch locate), to be read by `_finish_get_chunk`."""
        if self._reads_locally(where[0]):
            try:
                return self._locate_chunk(where, items)
            except shortcircuit.Unavailable as exc:
                self._local_reads_off(where[0], exc)
        return self._gateway_get_chunk(where, items)

    def _finish_get_chunk(self, where: tuple[str, str, str], items: builtins.list[_Item],
                          started: builtins.list[GetResult] | _Located
                          ) -> builtins.list[GetResult]:
        if not isinstance(started, _Located):
            return started
        try:
            return self._read_located_chunk(where, items, started)
        except shortcircuit.Unavailable as exc:
            self._local_reads_off(where[0], exc)
            return self._gateway_get_chunk(where, items)

    def _local_reads_off(self, cluster: str, why: Exception) -> None:
        log.warning("petrel cluster %s: short-circuit reads off in this process (%s); "
                    "batch gets go through the gateway", cluster, why)
        self._local_reads[cluster] = False

    def reads_locally(self, url: str) -> bool:
        """Whether batch gets of `url`'s cluster read records from the gateway's segment
        files here (short-circuit reads: on by setting, and not turned off in this
        process since). Raises InvalidUrl, ConfigError."""
        return self._reads_locally(self._cluster_name(parse_url(url)[0]))

    def _reads_locally(self, cluster: str) -> bool:
        on = self._local_reads.get(cluster)
        if on and cluster in self._local_paused_until:
            if time.monotonic() < self._local_paused_until[cluster]:
                return False
            del self._local_paused_until[cluster]
        if on is None:
            mode = self.config.cluster(cluster).short_circuit
            if self.short_circuit is not None:
                on = self.short_circuit
            else:
                on = self._transport(cluster).endpoint.is_loopback if mode == "auto" \
                    else mode == "true"
            self._local_reads[cluster] = on
        return on

    def _locate_chunk(self, where: tuple[str, str, str], items: builtins.list[_Item]
                      ) -> builtins.list[GetResult] | _Located:
        """A batch locate of one chunk: where its records are, or its results when the
        request failed as a whole. Raises shortcircuit.Unavailable."""
        body = wire.encode_get_request(items)
        try:
            response = self._batch_post(where, "batch-locate", body,
                                        hashlib.sha256(body).hexdigest())
            files, locations = wire.decode_locate_response(response.data, len(items))
        except NoSuchBucket:
            return [None] * len(items)
        except PetrelError as error:
            if error.code in _LOCATE_UNSUPPORTED:
                raise shortcircuit.Unavailable(f"the gateway answers a batch locate with "
                                               f"{error.code}: {error}") from error
            return [error] * len(items)
        return _Located(files, locations)

    def _read_located_chunk(self, where: tuple[str, str, str], items: builtins.list[_Item],
                            answer: _Located) -> builtins.list[GetResult]:
        """Read the records a batch locate found here; fetch the others with a batch get.
        Raises shortcircuit.Unavailable."""
        found, fetch = shortcircuit.read_located(where[1], [key for key, _ in items],
                                                 answer.files, answer.locations)
        results = cast(builtins.list[GetResult], found)  # errors join bytes and None
        if fetch:
            if not any(entry[6] == wire.Where.LOCATED for entry in answer.locations):
                # Nothing here is in a local file (an S3 backend's sealed segments):
                # batch gets for a while, rather than a batch locate before each.
                self._local_paused_until[where[0]] = time.monotonic() + LOCAL_READS_PAUSE_S
            fetched = self._gateway_get_chunk(where, [items[i] for i in fetch])
            for position, result in zip(fetch, fetched, strict=True):
                results[position] = result
        return results

    def _gateway_get_chunk(self, where: tuple[str, str, str], items: builtins.list[_Item]
                           ) -> builtins.list[GetResult]:
        body = wire.encode_get_request(items)
        bucket = Location(where[0], where[1], "")
        try:
            pieces = self._transport(bucket.cluster).request_pieces(
                "POST", bucket.path, [("batch-get", "")], body=body,
                payload_hash=hashlib.sha256(body).hexdigest(),
                headers={"Content-Type": wire.CONTENT_TYPE})
            return _decode_get_response(pieces, items)
        except NoSuchBucket:
            return [None] * len(items)
        except PetrelError as error:
            return [error] * len(items)

    def _batch_put_chunk(self, where: tuple[str, str, str],
                         items: builtins.list[tuple[str, bytes, str]]
                         ) -> builtins.list[str | PetrelError]:
        body = wire.encode_put_request(items)
        try:
            # Each frame carries an xxh3 checksum the gateway checks: no SHA-256 pass.
            response = self._batch_post(where, "batch-put", body, UNSIGNED_PAYLOAD)
            return _decode_put_response(response.data, [key for key, _, _ in items])
        except PetrelError as error:
            return [error] * len(items)

    def _batch_post(self, where: tuple[str, str, str], operation: str, body: bytes,
                    payload_hash: str) -> urllib3.BaseHTTPResponse:
        bucket = Location(where[0], where[1], "")
        return self._request("POST", bucket, [(operation, "")], body=body,
                             payload_hash=payload_hash,
                             headers={"Content-Type": wire.CONTENT_TYPE})


# ----- pure helpers ------------------------------------------------------------------------
_Item = tuple[str, tuple[int, int | None] | None]  # a key of a batch get, and its range
_ChunkRequest = tuple[tuple[str, str, str], builtins.list[_Item]]


@dataclass(frozen=True, slots=True)
class _Located:
    """A batch locate's answer for one chunk of a batch get, not read yet."""

    files: dict[int, wire.SegmentFile]
    locations: builtins.list[wire.LocateEntry]

@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object of a listing page (ETag without quotes)."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 page: objects, common prefixes, and the token of the next page
    (None on the last)."""

    objects: list[ListedObject]
    prefixes: list[str]
    next_token: str | None


def parse_list_page(body: bytes) -> ListPage:
    """A ListObjectsV2 answer sent with encoding-type=url. Raises InternalError for a
    truncated page without a continuation token (a server that cannot be paged)."""
    root = SafeET.fromstring(body)
    objects = [ListedObject(unquote(node.findtext(f"{_S3}Key") or ""),
                            int(node.findtext(f"{_S3}Size") or 0),
                            (node.findtext(f"{_S3}ETag") or "").strip('"'),
                            _iso_date(node.findtext(f"{_S3}LastModified")))
               for node in root.iter(f"{_S3}Contents")]
    prefixes = [unquote(node.findtext(f"{_S3}Prefix") or "")
                for node in root.iter(f"{_S3}CommonPrefixes")]
    truncated = root.findtext(f"{_S3}IsTruncated") == "true"
    token = root.findtext(f"{_S3}NextContinuationToken") if truncated else None
    if truncated and not token:
        raise InternalError("the server sent a truncated listing without a continuation "
                            "token")
    return ListPage(objects, prefixes, token)


def _iso_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _decode_get_response(pieces: Sequence[bytes],
                         items: Sequence[tuple[str, object]]) -> list[GetResult]:
    """Raises MalformedBatch for a stream that is cut short, corrupt, or does not answer
    the keys asked, in their order."""
    results: list[Any] = wire.decode_get_response(pieces, [key for key, _ in items])
    not_found = wire.Status.NOT_FOUND
    for index, answer in enumerate(results):
        if answer.__class__ is not bytes:  # a Frame: the rare case
            results[index] = None if answer.status is not_found else _item_error(answer)
    return results


def _decode_put_response(body: bytes, keys: Sequence[str]) -> list[str | PetrelError]:
    frames = wire.decode(body, wire.Kind.PUT_RESPONSE)
    if len(frames) != len(keys):
        raise MalformedBatch(f"batch put answered {len(frames)} items for {len(keys)}")
    results: list[str | PetrelError] = []
    for frame, key in zip(frames, keys, strict=True):
        if frame.key != key:
            raise MalformedBatch(f"batch put answered {frame.key!r} in the place of {key!r}")
        if frame.status is wire.Status.OK:
            results.append(bytes(frame.aux).decode("ascii", "replace"))
        else:
            results.append(_item_error(frame))
    return results


def _item_error(frame: wire.Frame) -> PetrelError:
    code, message = wire.parse_error_aux(frame.aux)
    return error_for_code(code)(message or None, resource=frame.key)


def _chunks(locs: Sequence[tuple[str, str, str]], sizes: Sequence[int], items_max: int,
            bytes_max: int | None) -> list[list[int]]:
    """Indices of `locs` ((cluster, bucket, key) each) grouped per (cluster, bucket), in
    order, cut at `items_max` items and (when set) `bytes_max` total size; an item
    larger than `bytes_max` is a chunk alone."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, (cluster, bucket, _) in enumerate(locs):
        groups.setdefault((cluster, bucket), []).append(index)
    chunks: list[list[int]] = []
    for indices in groups.values():
        chunk: list[int] = []
        chunk_bytes = 0
        for index in indices:
            full = len(chunk) >= items_max or (
                bytes_max is not None and chunk and chunk_bytes + sizes[index] > bytes_max)
            if full:
                chunks.append(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(index)
            chunk_bytes += sizes[index]
        if chunk:
            chunks.append(chunk)
    return chunks


def _dir_prefix(key: str) -> str:
    return key if not key or key.endswith("/") else key + "/"


def _as_bytes(content: Content) -> bytes:
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    read = getattr(content, "read", None)
    if read is None:
        raise TypeError(f"cannot store a {type(content).__name__}: bytes, str or a file")
    data = read()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _object_info(headers: Any) -> dict[str, Any]:
    return {
        "etag": headers.get("ETag", "").strip('"'),
        "size": int(headers.get("Content-Length", "0")),
        "last_modified": headers.get("Last-Modified"),
        "content_type": headers.get("Content-Type"),
    }
