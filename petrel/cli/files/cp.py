"""`petrel cp SRC DST`: local -> s3://, s3:// -> local, s3:// -> s3:// (clusters may
differ). `-` is stdin as a source, stdout as a destination.

- One file or object: DST ending in '/' (or an existing local directory) receives it
  under its base name.
- `-r`: a local directory's files go to DST/<relative path>, as with `aws s3 cp
  --recursive`; a prefix URL's objects (the URL is taken as a directory: `s3://b/p`
  means `p/`) go to DST/<key below the prefix>. Uploads are batch puts, downloads batch
  gets, bounded by --batch-items and --batch-bytes, --jobs batches at once; objects
  larger than --batch-bytes go one by one.
- A download is written to `NAME.petrel-tmp` and renamed when complete. A key that
  would land outside the destination directory (`../x`, an absolute path) is refused.

Exit 0 when everything was copied, 1 when something failed (each listed), 2 for usage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

from petrel.cli.bench import parse_size
from petrel.cli.remote import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Remote,
    RemoteUrl,
    add_remote_arguments,
    is_remote,
    main_guard,
)
from petrel.cli.upload import BATCH_BYTES_DEFAULT, BATCH_ITEMS_DEFAULT, JOBS_DEFAULT

if TYPE_CHECKING:
    from petrel.cli.upload import Batch
    from petrel.client import ListedObject

CHUNK_BYTES = 1024 * 1024
TMP_SUFFIX = ".petrel-tmp"
FAILURES_SHOWN_MAX = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a local path, '-', or [cluster:]s3://...")
    parser.add_argument("dst", metavar="DST", help="a local path, '-', or [cluster:]s3://...")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="copy a directory or everything under a prefix")
    parser.add_argument("--batch-items", type=int, default=BATCH_ITEMS_DEFAULT,
                        help="objects per batch request (-r)")
    parser.add_argument("--batch-bytes", type=parse_size, default=BATCH_BYTES_DEFAULT,
                        help="bytes per batch request (-r); larger objects go one by one")
    parser.add_argument("--jobs", type=int, default=JOBS_DEFAULT,
                        help="batch requests in flight (-r)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("cp", _cp, args)


def _cp(args: argparse.Namespace) -> int:
    src_remote, dst_remote = is_remote(args.src), is_remote(args.dst)
    if not (src_remote or dst_remote):
        raise CliError("neither SRC nor DST is an s3:// URL (use cp(1) for local copies)",
                       EXIT_USAGE)
    remote = Remote.from_args(args, batch_items=_bounded(args.batch_items, 1, 1000,
                                                         "--batch-items"),
                              batch_threads=_bounded(args.jobs, 1, 64, "--jobs"))
    if args.recursive:
        if args.src == "-" or args.dst == "-":
            raise CliError("'-' (stdin/stdout) cannot be used with -r", EXIT_USAGE)
        if not src_remote:
            failures = _upload_tree(remote, args)
        elif not dst_remote:
            failures = _download_tree(remote, args)
        else:
            failures = _copy_tree(remote, args)
        for name, error in failures[:FAILURES_SHOWN_MAX]:
            print(f"petrel cp: failed: {name}: {error}", file=sys.stderr)
        return EXIT_FAILED if failures else EXIT_OK
    if not src_remote:
        _upload_one(remote, args.src, remote.resolve(args.dst), args.quiet)
    elif not dst_remote:
        _download_one(remote, remote.resolve(args.src, need_key=True), args.dst, args.quiet)
    else:
        _copy_one(remote, remote.resolve(args.src, need_key=True), remote.resolve(args.dst),
                  args.quiet)
    return EXIT_OK


def _bounded(value: int, low: int, high: int, name: str) -> int:
    if not low <= value <= high:
        raise CliError(f"{name} must be in [{low}, {high}]", EXIT_USAGE)
    return value


# ----- one object ----------------------------------------------------------------------
def _upload_one(remote: Remote, src: str, dst: RemoteUrl, quiet: bool) -> None:
    if src != "-" and os.path.isdir(src):
        raise CliError(f"{src!r} is a directory (use -r)", EXIT_USAGE)
    if not dst.key or dst.key.endswith("/"):
        if src == "-":
            raise CliError("copying stdin needs a destination key, not a prefix", EXIT_USAGE)
        dst = dst.child(dst.key + os.path.basename(src))
    if src == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(src, "rb") as handle:
            data = handle.read()
    remote.client.put(str(dst), data)
    _say(quiet, f"upload: {src} to {dst.display}")


def _download_one(remote: Remote, src: RemoteUrl, dst: str, quiet: bool) -> None:
    body = remote.client.get(str(src), enable_stream=True)
    if body is None:
        raise CliError(_missing(remote, src))
    with body:
        if dst == "-":
            out = sys.stdout.buffer
            for chunk in body.iter_chunks(CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            return
        if dst.endswith(("/", os.sep)) or os.path.isdir(dst):
            dst = os.path.join(dst, os.path.basename(src.key))
        _write_atomically(dst, body.iter_chunks(CHUNK_BYTES))
    _say(quiet, f"download: {src.display} to {dst}")


def _copy_one(remote: Remote, src: RemoteUrl, dst: RemoteUrl, quiet: bool) -> None:
    if not dst.key or dst.key.endswith("/"):
        dst = dst.child(dst.key + os.path.basename(src.key))
    data = remote.client.get(str(src))
    if data is None:
        raise CliError(_missing(remote, src))
    remote.client.put(str(dst), data)
    _say(quiet, f"copy: {src.display} to {dst.display}")


def _missing(remote: Remote, where: RemoteUrl) -> str:
    below = where.child(where.key.rstrip("/") + "/")
    if remote.list_page(below, None, max_keys=1).objects:
        return f"{where.display} is a prefix, not an object (use -r)"
    return f"no such object: {where.display}"


# ----- trees ---------------------------------------------------------------------------
def _upload_tree(remote: Remote, args: argparse.Namespace) -> list[tuple[str, str]]:
    from petrel.cli.packsrc import walk_files
    from petrel.cli.upload import Batcher, Item

    if not os.path.isdir(args.src):
        raise CliError(f"{args.src!r} is not a directory", EXIT_USAGE)
    dst = _as_prefix(remote.resolve(args.dst))
    remote.list_page(dst, None, max_keys=1)  # NoSuchBucket before reading anything
    batcher = Batcher(args.batch_items, args.batch_bytes)

    def items() -> Iterator[Item]:
        for rel, path, _ in walk_files(args.src):
            with open(path, "rb") as handle:
                data = handle.read()
            yield Item(dst.child(dst.key + rel), data, hashlib.md5(data).hexdigest())

    def batches() -> Iterator[Batch]:
        for item in items():
            yield from batcher.add(item)
        yield from batcher.flush()

    return _store_all(remote, batches(), args, f"to {dst.display}")


def _copy_tree(remote: Remote, args: argparse.Namespace) -> list[tuple[str, str]]:
    from petrel.cli.upload import Batch, Item

    src = _as_prefix(remote.resolve(args.src))
    dst = _as_prefix(remote.resolve(args.dst))
    failures: list[tuple[str, str]] = []
    number = 0

    def batches() -> Iterator[Batch]:
        nonlocal number
        for group in _groups(remote.objects(src), args.batch_items, args.batch_bytes):
            urls = [str(src.child(info.key)) for info in group]
            batch = Batch(number := number + 1, single=len(group) == 1)
            for info, data in zip(group, remote.client.fetch_batch(urls), strict=True):
                if not isinstance(data, bytes):
                    failures.append((src.child(info.key).display, _fetch_error(data)))
                    continue
                target = dst.child(dst.key + info.key[len(src.key):])
                batch.items.append(Item(target, data, hashlib.md5(data).hexdigest()))
                batch.size_bytes += len(data)
            if batch.items:
                yield batch

    failures += _store_all(remote, batches(), args, f"from {src.display} to {dst.display}")
    return failures


def _store_all(remote: Remote, batches: Iterator[Batch], args: argparse.Namespace,
               where: str) -> list[tuple[str, str]]:
    from petrel.cli.upload import Pipeline, store_batch

    pipeline: Pipeline[list[str | None]] = Pipeline(args.jobs)
    failures: list[tuple[str, str]] = []
    stored = 0

    def answered(batch: Batch, errors: list[str | None]) -> None:
        nonlocal stored
        for item, error in zip(batch.items, errors, strict=True):
            if error is None:
                stored += 1
            else:
                failures.append((item.where.display, error))

    try:
        for batch in batches:
            for done in pipeline.start(batch, partial(store_batch, remote, batch)):
                answered(*done)
        for done in pipeline.drain():
            answered(*done)
    finally:
        pipeline.close()
    _say(args.quiet, f"copied {stored} objects {where}")
    return failures


def _download_tree(remote: Remote, args: argparse.Namespace) -> list[tuple[str, str]]:
    src = _as_prefix(remote.resolve(args.src))
    root = os.path.abspath(args.dst)
    failures: list[tuple[str, str]] = []
    copied = 0
    for group in _groups(remote.objects(src), args.batch_items * args.jobs,
                         args.batch_bytes * args.jobs):
        if len(group) == 1 and group[0].size > args.batch_bytes:
            results: list[object] = [None]  # streamed below, not held in memory
        else:
            results = list(remote.client.fetch_batch([str(src.child(i.key)) for i in group]))
        for info, data in zip(group, results, strict=True):
            name = src.child(info.key).display
            rel = info.key[len(src.key):]
            if not rel:
                continue  # the prefix's own "directory marker"
            path = _local_path(root, rel)
            if path is None:
                failures.append((name, "its key would be written outside the destination"))
            elif info.key.endswith("/"):
                os.makedirs(path, exist_ok=True)  # a "directory marker" object
                copied += 1
            elif data is None and info.size > args.batch_bytes:
                _download_one(remote, src.child(info.key), path, quiet=True)
                copied += 1
            elif isinstance(data, bytes):
                _write_atomically(path, iter((data,)))
                copied += 1
            else:
                failures.append((name, _fetch_error(data)))
    _say(args.quiet, f"copied {copied} objects from {src.display} to {args.dst}")
    return failures


def _groups(objects: Iterator[ListedObject], items_max: int,
            bytes_max: int) -> Iterator[list[ListedObject]]:
    """Listed objects in groups bounded by count and listed size; an object over
    `bytes_max` alone is a group."""
    group: list[ListedObject] = []
    size = 0
    for info in objects:
        if group and (len(group) >= items_max or size + info.size > bytes_max):
            yield group
            group, size = [], 0
        group.append(info)
        size += info.size
    if group:
        yield group


def _fetch_error(result: object) -> str:
    from petrel.cli.remote import describe_error

    if result is None:
        return "no longer exists"
    return describe_error(result) if isinstance(result, Exception) else repr(result)


def _local_path(root: str, rel: str) -> str | None:
    """root/rel, or None when rel would leave root (`..`, an absolute path)."""
    if not rel or rel.startswith("/") or "\x00" in rel:
        return None
    path = os.path.normpath(os.path.join(root, *rel.split("/")))
    inside = path == root or path.startswith(root.rstrip(os.sep) + os.sep)
    return path if inside and path != root else None


def _write_atomically(path: str, chunks: Iterator[bytes]) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + TMP_SUFFIX
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _as_prefix(where: RemoteUrl) -> RemoteUrl:
    return where if not where.key or where.key.endswith("/") else where.child(where.key + "/")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message)
