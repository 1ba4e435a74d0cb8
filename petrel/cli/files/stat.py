"""`petrel stat URL...`: size, ETag, last modified and content type of objects (HEAD)."""

from __future__ import annotations

import argparse
import json

from petrel.cli.remote import (
    EXIT_OK,
    CliError,
    ObjectInfo,
    Remote,
    RemoteUrl,
    add_remote_arguments,
    main_guard,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="[cluster:]s3://bucket/key")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("stat", _stat, args)


def _stat(args: argparse.Namespace) -> int:
    from petrel.errors import NoSuchBucket, NoSuchKey

    remote = Remote.from_args(args)
    for url in args.urls:
        where = remote.resolve(url, need_key=True)
        try:
            info = remote.head(where)
        except NoSuchBucket:
            raise CliError(f"no such bucket: s3://{where.bucket}") from None
        except NoSuchKey:
            raise CliError(_missing(remote, where)) from None
        print(_render_json(where, info) if args.json else _render(where, info))
    return EXIT_OK


def _missing(remote: Remote, where: RemoteUrl) -> str:
    below = where.child(where.key.rstrip("/") + "/")
    if remote.list_page(below, None, max_keys=1).objects:
        return f"{where.display} is a prefix, not an object (petrel ls {below.display})"
    return f"no such object: {where.display}"


def _render(where: RemoteUrl, info: ObjectInfo) -> str:
    modified = info.last_modified.isoformat() if info.last_modified else "-"
    return "\n".join([
        f"URL:           {where.display}",
        f"Size:          {info.size}",
        f"ETag:          {info.etag}",
        f"Last modified: {modified}",
        f"Content type:  {info.content_type or '-'}",
    ])


def _render_json(where: RemoteUrl, info: ObjectInfo) -> str:
    return json.dumps({
        "url": where.display, "size": info.size, "etag": info.etag,
        "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        "content_type": info.content_type,
    })
