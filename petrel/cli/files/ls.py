"""`petrel ls [URL]`, like `aws s3 ls`: the buckets (no URL, or `s3://`), or the
directories (`PRE name/`) and objects (date, size, name) one level under a URL; `-r`
lists every object below it with its full key.

As in S3, the URL's key is a prefix: `s3://b/img` shows `PRE img/` and objects such as
`img.txt`; `s3://b/img/` shows what is inside `img/`. Output is streamed a page of 1000
keys at a time. Exit 1 when nothing matches (as `aws s3 ls` does).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from petrel.cli.remote import (
    EXIT_FAILED,
    EXIT_OK,
    Remote,
    add_remote_arguments,
    main_guard,
)

if TYPE_CHECKING:
    from petrel.client import ListedObject

SIZE_WIDTH = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", default="s3://", metavar="URL",
                        help="[cluster:]s3://bucket/prefix (default: list the buckets)")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="every object under the prefix, with full keys")
    parser.add_argument("--human-readable", action="store_true",
                        help="sizes in KiB, MiB, ...")
    parser.add_argument("--summarize", action="store_true",
                        help="print the number of objects and their total size")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("ls", _ls, args)


def _ls(args: argparse.Namespace) -> int:
    from petrel.client import parse_url

    remote = Remote.from_args(args)
    cluster, bucket, _ = parse_url(args.url)
    if not bucket:
        for name, created in remote.list_buckets(cluster):
            print(f"{_date(created)} {name}")
        return EXIT_OK
    where = remote.resolve(args.url)
    cut = 0 if args.recursive else where.key.rfind("/") + 1
    count = total = 0
    listed = False
    for page in remote.walk(where, None if args.recursive else "/"):
        lines = [f"{'PRE':>{len(_date(None)) + SIZE_WIDTH + 1}} {prefix[cut:]}"
                 for prefix in page.prefixes]
        lines += [_object_line(info, cut, args.human_readable) for info in page.objects]
        listed = listed or bool(lines)
        count += len(page.objects)
        total += sum(info.size for info in page.objects)
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
    if args.summarize:
        print(f"\nTotal Objects: {count}\n   Total Size: {_size(total, args.human_readable)}")
    if not listed:
        print(f"petrel ls: nothing under {where.display}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _object_line(info: ListedObject, cut: int, human: bool) -> str:
    return f"{_date(info.last_modified)} {_size(info.size, human):>{SIZE_WIDTH}} {info.key[cut:]}"


def _size(size: int, human: bool) -> str:
    if not human:
        return str(size)
    from petrel.cli.progress import human_bytes

    return human_bytes(size)


def _date(moment: datetime | None) -> str:
    """Local time, as `aws s3 ls` prints it."""
    if moment is None:
        return " " * 19
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
