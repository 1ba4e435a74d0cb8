"""`petrel` entry point. Subcommands import their modules lazily, so `petrel --help`
and DataLoader workers never pay for aiohttp or RocksDB."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "serve": ("petrel.cli.serve", "run the S3 gateway"),
    "fsck": ("petrel.cli.fsck", "verify segments; rebuild the index from segments"),
    "bench": ("petrel.cli.bench", "measure ops/s, MB/s and latency of any S3 endpoint"),
    "pack": ("petrel.cli.pack", "bulk-ingest a directory, tar file or WebDataset shards"),
    "ls": ("petrel.cli.files.ls", "list buckets, or objects and directories under a URL"),
    "cp": ("petrel.cli.files.cp", "copy files and objects (local <-> s3://, s3:// -> s3://)"),
    "cat": ("petrel.cli.files.cat", "write an object to stdout"),
    "rm": ("petrel.cli.files.rm", "delete an object, or everything under a prefix (-r)"),
    "stat": ("petrel.cli.files.stat", "show an object's size, ETag, date and content type"),
    "mb": ("petrel.cli.files.mb", "make a bucket"),
    "rb": ("petrel.cli.files.rb", "remove a bucket (--force empties it first)"),
    "stats": ("petrel.cli.stats", "objects, bytes, segments, dead bytes of a gateway"),
    "compact": ("petrel.cli.compact", "compact a running gateway's segments now"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petrel", description="petrel: small-file storage")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
