"""`petrel rb [cluster:]s3://bucket`: remove an empty bucket; `--force` deletes its
objects first (no question asked: --force is the confirmation, as in `aws s3 rb`)."""

from __future__ import annotations

import argparse
import sys

from petrel.cli.remote import EXIT_OK, CliError, Remote, add_remote_arguments, main_guard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="[cluster:]s3://bucket")
    parser.add_argument("--force", action="store_true",
                        help="delete every object in the bucket first")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("rb", _rb, args)


def _rb(args: argparse.Namespace) -> int:
    from petrel.cli.files.rm import delete_under
    from petrel.errors import BucketNotEmpty, NoSuchBucket

    remote = Remote.from_args(args)
    where = remote.resolve(args.url)
    if where.key:
        raise CliError(f"{args.url!r}: a bucket URL has no key (s3://bucket)", 2)
    bucket = where.child("")
    if args.force:
        try:
            deleted, failures = delete_under(remote, bucket)
        except NoSuchBucket:
            raise CliError(f"no such bucket: s3://{where.bucket}") from None
        if failures:
            for key, error in failures[:20]:
                print(f"petrel rb: failed: s3://{where.bucket}/{key}: {error}",
                      file=sys.stderr)
            raise CliError(f"{len(failures)} objects could not be deleted; bucket kept")
        if deleted:
            print(f"deleted {deleted} objects from s3://{where.bucket}")
    try:
        remote.delete_bucket(bucket)
    except BucketNotEmpty:
        raise CliError(f"bucket s3://{where.bucket} is not empty "
                       "(--force deletes its objects first)") from None
    except NoSuchBucket:
        raise CliError(f"no such bucket: s3://{where.bucket}") from None
    print(f"remove_bucket: {where.bucket}")
    return EXIT_OK
