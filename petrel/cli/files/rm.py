"""`petrel rm URL` deletes one object; `petrel rm -r URL` everything under a prefix,
after a confirmation (`-y` skips it; without a terminal to ask on, `-r` needs `-y`).

A recursive delete lists a page of up to 1000 keys and deletes them with one
DeleteObjects request, page after page: memory is bounded by one page.
"""

from __future__ import annotations

import argparse
import sys

from petrel.cli.remote import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Remote,
    RemoteUrl,
    add_remote_arguments,
    main_guard,
)

FAILURES_SHOWN_MAX = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="[cluster:]s3://bucket/key or prefix")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="delete every object under the prefix URL/ (asks first)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="do not ask for confirmation (needed with -r without a terminal)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("rm", _rm, args)


def _rm(args: argparse.Namespace) -> int:
    remote = Remote.from_args(args)
    where = remote.resolve(args.url)
    if not args.recursive:
        return _rm_one(remote, where, args.quiet)
    prefix = where.key if not where.key or where.key.endswith("/") else where.key + "/"
    where = where.child(prefix)
    first = remote.list_page(where, None)
    if not first.objects:
        raise CliError(f"nothing under {where.display}")
    count = f"more than {len(first.objects)}" if first.next_token else str(len(first.objects))
    if not args.yes:
        _confirm(f"delete {count} objects under {where.display}?")
    deleted, failures = delete_under(remote, where)
    for key, error in failures[:FAILURES_SHOWN_MAX]:
        print(f"petrel rm: failed: s3://{where.bucket}/{key}: {error}", file=sys.stderr)
    if not args.quiet:
        print(f"deleted {deleted} objects under {where.display}")
    return EXIT_FAILED if failures else EXIT_OK


def _rm_one(remote: Remote, where: RemoteUrl, quiet: bool) -> int:
    if not where.key:
        raise CliError(f"{where.display} is a bucket: use `petrel rm -r` to empty it or "
                       "`petrel rb` to remove it", EXIT_USAGE)
    if not remote.exists(where):
        if remote.list_page(where.child(where.key.rstrip("/") + "/"), None, max_keys=1).objects:
            raise CliError(f"{where.display} is a prefix, not an object (use -r)")
        raise CliError(f"no such object: {where.display}")
    remote.client.delete(str(where))
    if not quiet:
        print(f"delete: {where.display}")
    return EXIT_OK


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise CliError("refusing to delete recursively without confirmation: stdin is not "
                       "a terminal (pass --yes)", EXIT_USAGE)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("nothing deleted", EXIT_FAILED)


def delete_under(remote: Remote, where: RemoteUrl) -> tuple[int, list[tuple[str, str]]]:
    """Delete every object whose key starts with `where.key`, a page at a time;
    (objects deleted, [(key, error)] of those that were not)."""
    deleted = 0
    failures: list[tuple[str, str]] = []
    for page in remote.walk(where):
        keys = [info.key for info in page.objects]
        errors = remote.delete_keys(where, keys)
        failures += errors
        deleted += len(keys) - len(errors)
    return deleted, failures
