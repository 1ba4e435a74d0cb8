"""`petrel cat URL...`: write objects to stdout, byte for byte, one after another."""

from __future__ import annotations

import argparse
import sys

from petrel.cli.remote import EXIT_OK, CliError, Remote, add_remote_arguments, main_guard

CHUNK_BYTES = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="[cluster:]s3://bucket/key")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("cat", _cat, args)


def _cat(args: argparse.Namespace) -> int:
    remote = Remote.from_args(args)
    out = sys.stdout.buffer
    for url in args.urls:
        where = remote.resolve(url, need_key=True)
        body = remote.client.get(str(where), enable_stream=True)
        if body is None:
            raise CliError(f"no such object: {where.display}")
        with body:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                out.write(chunk)
    out.flush()
    return EXIT_OK
