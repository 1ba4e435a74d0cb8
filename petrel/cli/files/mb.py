"""`petrel mb [cluster:]s3://bucket...`: create buckets."""

from __future__ import annotations

import argparse

from petrel.cli.remote import EXIT_OK, CliError, Remote, add_remote_arguments, main_guard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="[cluster:]s3://bucket")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("mb", _mb, args)


def _mb(args: argparse.Namespace) -> int:
    from petrel.errors import BucketAlreadyOwnedByYou

    remote = Remote.from_args(args)
    for url in args.urls:
        where = remote.resolve(url)
        if where.key:
            raise CliError(f"{url!r}: a bucket URL has no key (s3://bucket)", 2)
        try:
            remote.client.create_bucket(str(where))
        except BucketAlreadyOwnedByYou:
            raise CliError(f"bucket s3://{where.bucket} already exists") from None
        print(f"make_bucket: {where.bucket}")
    return EXIT_OK
