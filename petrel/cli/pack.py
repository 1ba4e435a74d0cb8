"""`petrel pack SRC... [cluster:]s3://bucket/prefix`: bulk ingest through the batch API.

    petrel pack ./imagenet/train s3://train/imagenet/           # a directory tree
    petrel pack ./coco.tar.gz s3://train/coco/                  # one tar file
    petrel pack shards/*.tar s3://train/laion/                  # WebDataset shards

What goes where is in petrel/cli/packsrc.py (and docs/cli.md). Files are stored with
batch puts bounded by --batch-items and --batch-bytes, --jobs batches in flight; a file
larger than --batch-bytes goes by plain PUT. At the end a manifest object
(petrel/manifest.py format) lists every packed object in source order, with its size.

Resuming: a journal on local disk (petrel/cli/journal.py) records each batch before it
is sent and after it is answered. Run the same command again and files already stored
(same key, size and MD5) are skipped; the items of batches that were in flight when the
first run died are checked on the server (HEAD: size and ETag) before anything is sent.
`--check-remote` also skips objects already on the server with the same size and ETag
(a lost journal, another machine). Exit codes: 0 all stored, 1 some files failed (each
listed on stderr), 2 usage, 130 interrupted (run again to resume).

Test hook, not for users: with PETREL_PACK_TEST_CRASH_AFTER_BATCHES=N in the
environment the process exits at once (status 86, nothing flushed) when the answer of
its Nth batch arrives, before recording it in the journal: the worst moment to die,
which tests use to check that a resumed pack stores each file exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from petrel.cli.bench import parse_size
from petrel.cli.remote import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    RemoteUrl,
    add_remote_arguments,
    is_remote,
    main_guard,
)
from petrel.cli.upload import (
    BATCH_BYTES_DEFAULT,
    BATCH_BYTES_MAX,
    BATCH_ITEMS_DEFAULT,
    BATCH_ITEMS_MAX,
    JOBS_DEFAULT,
    JOBS_MAX,
)

if TYPE_CHECKING:
    from petrel.cli.journal import Journal, Stored
    from petrel.cli.packsrc import Source
    from petrel.cli.progress import Progress
    from petrel.cli.remote import Remote
    from petrel.cli.upload import Batch, Pipeline

CRASH_ENV = "PETREL_PACK_TEST_CRASH_AFTER_BATCHES"
EXIT_TEST_CRASH = 86
MANIFEST_SUFFIX = ".manifest.jsonl"
FAILURES_SHOWN_MAX = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="+", metavar="SRC",
                        help="a directory, a tar file, or WebDataset .tar shards")
    parser.add_argument("dst", metavar="DST", help="[cluster:]s3://bucket/prefix")
    parser.add_argument("--source", choices=("auto", "dir", "tar", "shards"), default="auto",
                        help="what SRC is (auto: a directory is a tree, one tar file its "
                             "members, several tar files shards; 'shards' with a directory "
                             "takes the tar files under it)")
    parser.add_argument("--batch-items", type=int, default=BATCH_ITEMS_DEFAULT,
                        help=f"objects per batch put (at most {BATCH_ITEMS_MAX})")
    parser.add_argument("--batch-bytes", type=parse_size, default=BATCH_BYTES_DEFAULT,
                        help="bytes per batch put (default 64MiB, at most 256MiB); larger "
                             "files go by plain PUT")
    parser.add_argument("--jobs", type=int, default=JOBS_DEFAULT,
                        help=f"batches in flight (at most {JOBS_MAX})")
    parser.add_argument("--manifest", metavar="KEY|URL",
                        help="where to write the manifest: a key in the destination bucket "
                             "or a URL (default: PREFIX.manifest.jsonl beside the prefix)")
    parser.add_argument("--no-manifest", action="store_true", help="write no manifest")
    parser.add_argument("--journal", metavar="PATH",
                        help="resume journal (default ~/.cache/petrel/pack/<hash>.jsonl)")
    parser.add_argument("--restart", action="store_true",
                        help="forget the journal of an earlier run and store everything")
    parser.add_argument("--check-remote", action="store_true",
                        help="list the prefix first and skip objects already there with "
                             "the same size and MD5 ETag")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no summary")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_guard("pack", _pack, args)


@dataclass(slots=True)
class _State:
    """What one pack run has seen and stored."""

    remote: Remote
    journal: Journal
    progress: Progress
    skip: dict[str, Stored]
    # Keys in source order (a dict: a key seen twice keeps its first place).
    order: dict[str, None] = field(default_factory=dict)
    stored: dict[str, Stored] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    batches_answered: int = 0
    crash_after: int | None = None


def _pack(args: argparse.Namespace) -> int:
    from petrel.cli.journal import Journal, default_path
    from petrel.cli.packsrc import SourceError, resolve_source
    from petrel.cli.remote import Remote

    _check_usage(args)
    try:
        source = resolve_source(args.src, args.source)
    except SourceError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    remote = Remote.from_args(args, batch_items=args.batch_items, batch_threads=1)
    dest = remote.resolve(args.dst)
    prefix = dest.key if not dest.key or dest.key.endswith("/") else dest.key + "/"
    dest = dest.child(prefix)
    manifest = None if args.no_manifest else _manifest_url(remote, dest, args.manifest)
    remote.list_page(dest, None, max_keys=1)  # NoSuchBucket before reading anything
    sources = [os.path.abspath(path) for path in source.paths]
    label = f"{source.kind}:{','.join(sources)}"
    journal_path = args.journal or default_path(label, str(dest))
    if args.restart and os.path.exists(journal_path):
        os.remove(journal_path)
    progress = _progress(args, source)
    journal = Journal(journal_path, label, str(dest))
    try:
        state = _State(remote, journal, progress, _already_stored(remote, dest, journal, args))
        crash = os.environ.get(CRASH_ENV)
        state.crash_after = int(crash) if crash else None
        started = time.monotonic()
        interrupted = _stream(state, source, dest, manifest, args)
    finally:
        journal.close()
    progress.finish()
    if interrupted:
        print(f"petrel pack: interrupted after storing {progress.files} files; run the same "
              f"command again to resume (journal {journal_path})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if manifest is not None:
        _write_manifest(state, manifest, label, complete=not state.failures)
    return _report(state, dest, manifest, time.monotonic() - started, args.quiet)


def _check_usage(args: argparse.Namespace) -> None:
    if not is_remote(args.dst):
        raise CliError(f"the destination {args.dst!r} is not an s3:// URL", EXIT_USAGE)
    for path in args.src:
        if is_remote(path):
            raise CliError(f"pack reads local files; {path!r} is a URL (use petrel cp)",
                           EXIT_USAGE)
    if not 1 <= args.batch_items <= BATCH_ITEMS_MAX:
        raise CliError(f"--batch-items must be in [1, {BATCH_ITEMS_MAX}]", EXIT_USAGE)
    if not 1 <= args.batch_bytes <= BATCH_BYTES_MAX:
        raise CliError(f"--batch-bytes must be in [1, {BATCH_BYTES_MAX}]", EXIT_USAGE)
    if not 1 <= args.jobs <= JOBS_MAX:
        raise CliError(f"--jobs must be in [1, {JOBS_MAX}]", EXIT_USAGE)


def _manifest_url(remote: Remote, dest: RemoteUrl, given: str | None) -> RemoteUrl:
    if given is None:
        name = dest.key.rstrip("/") or "manifest"
        return dest.child(name + MANIFEST_SUFFIX)
    if is_remote(given):
        return remote.resolve(given, need_key=True)
    if not given.strip("/"):
        raise CliError(f"--manifest {given!r} is not a key", EXIT_USAGE)
    return dest.child(given.lstrip("/"))


def _progress(args: argparse.Namespace, source: Source) -> Progress:
    from petrel.cli.progress import Progress

    enabled = Progress.wanted(args.quiet)
    if not enabled:
        return Progress(enabled=False)
    return Progress(enabled=True, total_files=source.total_files(),
                    total_bytes=source.total_bytes())


def _already_stored(remote: Remote, dest: RemoteUrl, journal: Journal,
                    args: argparse.Namespace) -> dict[str, Stored]:
    """Keys to skip when their size and MD5 match: the journal's, the uncertain ones
    found on the server, and with --check-remote every object under the prefix."""
    from petrel.cli.journal import Stored
    from petrel.cli.upload import is_stored

    confirmed = [(key, item) for key, item in journal.uncertain.items()
                 if is_stored(remote, dest.child(key), item.size, item.md5)]
    journal.confirm(confirmed)
    skip = dict(journal.stored)
    if args.check_remote:
        for info in remote.objects(dest):
            skip.setdefault(info.key, Stored(info.size, info.etag))
    return skip


def _stream(state: _State, source: Source, dest: RemoteUrl, manifest: RemoteUrl | None,
            args: argparse.Namespace) -> bool:
    """Read the source, send batches, handle answers; returns True if interrupted."""
    import hashlib

    from petrel.cli.journal import Stored
    from petrel.cli.upload import Batcher, Item, Pipeline

    batcher = Batcher(args.batch_items, args.batch_bytes)
    pipeline: Pipeline[list[str | None]] = Pipeline(args.jobs)
    try:
        try:
            for entry in source.entries():
                key = dest.key + entry.key
                state.order[key] = None
                item = Stored(len(entry.data), hashlib.md5(entry.data).hexdigest())
                if manifest is not None and key == manifest.key and \
                        manifest.bucket == dest.bucket:
                    state.failures.append((key, "has the manifest's key (pass --manifest)"))
                elif state.skip.get(key) == item:
                    state.stored[key] = item
                    state.progress.advance(skipped=1, position_bytes=entry.position_bytes)
                    continue
                else:
                    for batch in batcher.add(Item(dest.child(key), entry.data, item.md5)):
                        _launch(state, pipeline, batch)
                state.progress.advance(position_bytes=entry.position_bytes)
            for batch in batcher.flush():
                _launch(state, pipeline, batch)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True  # what is in flight is answered and journaled below
        for answered in pipeline.drain():
            _answered(state, *answered)
    finally:
        pipeline.close()
    return interrupted


def _launch(state: _State, pipeline: Pipeline[list[str | None]], batch: Batch) -> None:
    from petrel.cli.journal import Stored
    from petrel.cli.upload import store_batch

    name = f"{state.journal.run}.{batch.number}"
    state.journal.sent(name, [(item.where.key, Stored(len(item.data), item.md5))
                              for item in batch.items])
    remote = state.remote
    for answered in pipeline.start(batch, partial(store_batch, remote, batch)):
        _answered(state, *answered)


def _answered(state: _State, batch: Batch, errors: list[str | None]) -> None:
    from petrel.cli.journal import Stored

    state.batches_answered += 1
    if state.crash_after is not None and state.batches_answered >= state.crash_after:
        os._exit(EXIT_TEST_CRASH)  # the test hook (module docstring)
    failed = [item.where.key for item, error in zip(batch.items, errors, strict=True)
              if error is not None]
    state.journal.done(f"{state.journal.run}.{batch.number}", failed)
    for item, error in zip(batch.items, errors, strict=True):
        if error is None:
            state.stored[item.where.key] = Stored(len(item.data), item.md5)
            state.progress.advance(files=1, size=len(item.data))
        else:
            state.failures.append((item.where.key, error))
            state.progress.advance(failed=1)


def _write_manifest(state: _State, where: RemoteUrl, label: str, *, complete: bool) -> None:
    from petrel import manifest

    entries = [manifest.ManifestEntry(key, state.stored[key].size)
               for key in state.order if key in state.stored]
    body = manifest.encode(entries, source=label, bucket=f"s3://{where.bucket}/",
                           objects=len(entries),
                           bytes=sum(entry.size or 0 for entry in entries),
                           complete=complete)
    if _holds(state.remote, where, body):
        return  # a re-run that stored nothing new: the manifest is already this one
    state.remote.client.put(str(where), body)


def _holds(remote: Remote, where: RemoteUrl, body: bytes) -> bool:
    import hashlib

    from petrel.cli.upload import is_stored

    return is_stored(remote, where, len(body), hashlib.md5(body).hexdigest())


def _report(state: _State, dest: RemoteUrl, manifest: RemoteUrl | None, elapsed_s: float,
            quiet: bool) -> int:
    from petrel.cli.progress import human_bytes

    for key, error in state.failures[:FAILURES_SHOWN_MAX]:
        print(f"petrel pack: failed: s3://{dest.bucket}/{key}: {error}", file=sys.stderr)
    if len(state.failures) > FAILURES_SHOWN_MAX:
        print(f"petrel pack: ... and {len(state.failures) - FAILURES_SHOWN_MAX} more",
              file=sys.stderr)
    progress = state.progress
    if not quiet:
        rate = human_bytes(progress.bytes / max(elapsed_s, 1e-6))
        print(f"packed {progress.files} files ({human_bytes(progress.bytes)}) to "
              f"{dest.display} in {elapsed_s:.1f}s ({rate}/s); {progress.skipped} already "
              f"stored, {len(state.failures)} failed")
        if manifest is not None:
            print(f"manifest: {manifest.display} ({len(state.stored)} objects)")
    return EXIT_FAILED if state.failures else EXIT_OK
