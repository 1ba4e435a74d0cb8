"""What the file commands (`ls`, `cp`, `cat`, `rm`, `stat`, `mb`, `rb`) and `pack` share:
URLs and petreloss.conf as `petrel.Client` reads them, the S3 calls the client does not
offer (a listing page with sizes and dates, HEAD with headers, multi-object delete,
delete bucket), and the one place a user error becomes a message and an exit code.

Imported by the subcommand modules at their top, so it stays light: the client and its
HTTP stack are imported inside `Remote`, when a command runs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from petrel.client import Client, ListedObject, ListPage
    from petrel.transport import Transport

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Keys per multi-object delete: S3's own limit.
DELETE_KEYS_MAX = 1000
LIST_PAGE_KEYS = 1000
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class CliError(Exception):
    """A user-facing failure: printed as `petrel CMD: MESSAGE`, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class RemoteUrl:
    """`[cluster:]s3://bucket/key`, with the cluster resolved (never None)."""

    cluster: str
    bucket: str
    key: str

    def child(self, key: str) -> RemoteUrl:
        return RemoteUrl(self.cluster, self.bucket, key)

    def __str__(self) -> str:
        return f"{self.cluster}:s3://{self.bucket}/{self.key}"

    @property
    def display(self) -> str:
        """As users write it, without the cluster (shown by `str`)."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime | None
    content_type: str | None = None


def is_remote(text: str) -> bool:
    """Whether `text` is an `[cluster:]s3://` URL rather than a local path."""
    head, sep, _ = text.partition("s3://")
    return bool(sep) and (head == "" or (head.endswith(":") and "/" not in head))


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default=os.environ.get("PETREL_CONF"),
                        help="petreloss.conf to read (default ~/petreloss.conf; env PETREL_CONF)")
    parser.add_argument("--cluster",
                        help="cluster for URLs without a `cluster:` prefix "
                             "(default: default_cluster of petreloss.conf)")


def main_guard(command: str, body: Callable[[argparse.Namespace], int],
               args: argparse.Namespace) -> int:
    """Run `body(args)`; turn user errors into `petrel COMMAND: message` on stderr and an
    exit code (1 for a failure, 2 for usage, 130 for Ctrl-C). Programming errors still
    raise: a traceback there is a bug report."""
    from petrel.errors import PetrelError

    try:
        return body(args)
    except CliError as exc:
        _say(command, str(exc))
        return exc.exit_code
    except PetrelError as exc:
        _say(command, describe_error(exc))
        return EXIT_FAILED
    except ValueError as exc:  # petrel.client's ConfigError and InvalidUrl
        _say(command, str(exc))
        return EXIT_USAGE if type(exc).__name__ == "InvalidUrl" else EXIT_FAILED
    except BrokenPipeError:
        # `petrel cat ... | head`: the reader left; not an error of ours.
        _silence_stdout()
        return EXIT_OK
    except OSError as exc:
        _say(command, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(command, "interrupted")
        return EXIT_INTERRUPTED


def describe_error(exc: Exception) -> str:
    """`NoSuchKey: The specified key does not exist. (s3://b/k)` for a petrel error."""
    code = getattr(exc, "code", type(exc).__name__)
    resource = getattr(exc, "resource", None)
    if code in ("NoSuchBucket", "NoSuchKey") and resource and resource.startswith("/"):
        # The client names "/bucket/key" paths; users wrote URLs.
        bucket, _, key = resource[1:].partition("/")
        if code == "NoSuchBucket":
            return f"no such bucket: s3://{bucket}"
        return f"no such object: s3://{bucket}/{key}"
    detail = getattr(exc, "detail", str(exc))
    return f"{code}: {detail}" + (f" ({resource})" if resource else "")


def _say(command: str, message: str) -> None:
    print(f"petrel {command}: {message}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    # Python would otherwise report the broken pipe again when it flushes at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class Remote:
    """A `petrel.Client` plus the few raw S3 calls the commands need, over the same
    petreloss.conf. `cluster` is used for URLs that name none."""

    def __init__(self, conf: str | None, cluster: str | None, *,
                 batch_items: int = 256, batch_threads: int = 4) -> None:
        from petrel.client import Client

        self.client: Client = Client(conf, batch_size=batch_items, batch_threads=batch_threads)
        self.default_cluster = cluster
        self._transports: dict[str, Transport] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace, **kwargs: Any) -> Remote:
        return cls(args.conf, args.cluster, **kwargs)

    def resolve(self, url: str, *, need_key: bool = False) -> RemoteUrl:
        """Raises InvalidUrl (a ValueError) for a bad URL, ConfigError for a cluster the
        configuration lacks."""
        from petrel.client import InvalidUrl, parse_url

        cluster, bucket, key = parse_url(url)
        if not bucket:
            raise InvalidUrl(f"{url!r} names no bucket")
        if need_key and not key:
            raise InvalidUrl(f"{url!r} names no object key")
        name = self.client.config.cluster(cluster or self.default_cluster).name
        return RemoteUrl(name, bucket, key)

    # ----- raw calls -----------------------------------------------------------------------
    def _transport(self, cluster: str) -> Transport:
        transport = self._transports.get(cluster)
        if transport is None:
            from petrel.sigv4 import Signer
            from petrel.transport import Endpoint, Transport

            conf = self.client.config.cluster(cluster)
            signer = Signer(conf.access_key, conf.secret_key, conf.region)
            transport = Transport(Endpoint.parse(conf.host_base), signer,
                                  self.client.retry, self.client.timeouts)
            self._transports[cluster] = transport
        return transport

    def _call(self, method: str, where: RemoteUrl, query: Sequence[tuple[str, str]] = (),
              **kwargs: Any) -> Any:
        from petrel.sigv4 import EMPTY_SHA256

        kwargs.setdefault("payload_hash", EMPTY_SHA256)
        path = f"/{where.bucket}/{where.key}" if where.key else f"/{where.bucket}"
        return self._transport(where.cluster).request(method, path, query,
                                                      key=where.key or None, **kwargs)

    def head(self, where: RemoteUrl) -> ObjectInfo:
        """Raises NoSuchKey (or NoSuchBucket) when the object does not exist."""
        headers = self._call("HEAD", where).headers
        return ObjectInfo(where.key, int(headers.get("Content-Length", "0")),
                          headers.get("ETag", "").strip('"'),
                          _http_date(headers.get("Last-Modified")),
                          headers.get("Content-Type"))

    def exists(self, where: RemoteUrl) -> bool:
        from petrel.errors import NoSuchBucket, NoSuchKey

        try:
            self.head(where)
        except (NoSuchKey, NoSuchBucket):
            return False
        return True

    def list_page(self, where: RemoteUrl, delimiter: str | None,
                  token: str | None = None, max_keys: int = LIST_PAGE_KEYS) -> ListPage:
        """One ListObjectsV2 page of keys starting with `where.key`. Raises NoSuchBucket."""
        query = [("list-type", "2"), ("encoding-type", "url"), ("prefix", where.key),
                 ("max-keys", str(max_keys))]
        if delimiter is not None:
            query.append(("delimiter", delimiter))
        if token is not None:
            query.append(("continuation-token", token))
        from petrel.client import parse_list_page

        return parse_list_page(self._call("GET", where.child(""), query).data)

    def walk(self, where: RemoteUrl, delimiter: str | None = None) -> Iterator[ListPage]:
        """Every page under `where.key`, lazily (one page in memory at a time)."""
        token: str | None = None
        while True:
            page = self.list_page(where, delimiter, token)
            yield page
            token = page.next_token
            if token is None:
                return

    def objects(self, where: RemoteUrl) -> Iterator[ListedObject]:
        """Every object whose key starts with `where.key`, at all depths."""
        for page in self.walk(where):
            yield from page.objects

    def list_buckets(self, cluster: str | None) -> list[tuple[str, datetime | None]]:
        from petrel.sigv4 import EMPTY_SHA256

        name = self.client.config.cluster(cluster or self.default_cluster).name
        body = self._transport(name).request("GET", "/", payload_hash=EMPTY_SHA256).data
        root = _xml(body)
        return [(node.findtext(f"{_S3}Name") or "",
                 _iso_date(node.findtext(f"{_S3}CreationDate")))
                for node in root.iter(f"{_S3}Bucket")]

    def delete_keys(self, bucket: RemoteUrl, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Delete up to DELETE_KEYS_MAX keys of `bucket` in one DeleteObjects request;
        returns (key, "Code: message") for each key that was not deleted."""
        if not keys:
            return []
        if len(keys) > DELETE_KEYS_MAX:
            raise ValueError(f"{len(keys)} keys in one delete (at most {DELETE_KEYS_MAX})")
        body = _delete_objects_xml(keys)
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                   "Content-Type": "application/xml"}
        response = self._call("POST", bucket.child(""), [("delete", "")], body=body,
                              headers=headers, payload_hash=hashlib.sha256(body).hexdigest())
        root = _xml(response.data)
        return [(node.findtext(f"{_S3}Key") or "",
                 f"{node.findtext(f'{_S3}Code')}: {node.findtext(f'{_S3}Message')}")
                for node in root.iter(f"{_S3}Error")]

    def delete_bucket(self, bucket: RemoteUrl) -> None:
        """Raises BucketNotEmpty, NoSuchBucket."""
        self._call("DELETE", bucket.child(""), idempotent=False)


# ----- pure helpers ------------------------------------------------------------------------
def _xml(body: bytes) -> Any:
    import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]

    return SafeET.fromstring(body)


def _delete_objects_xml(keys: Sequence[str]) -> bytes:
    items = "".join(f"<Object><Key>{escape(key)}</Key></Object>" for key in keys)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Delete '
            f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>'
            f"{items}</Delete>").encode()


def _iso_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _http_date(text: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime

    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
