"""The peer: the same objects as one file each on the local filesystem.

Writes are `open(O_CREAT|O_TRUNC) / write / [fsync] / close`; the directory is not
fsynced after each create, which a crash-safe writer would also need, so the fsync
numbers flatter the peer. Shard directories are created before timing. Reads are
`open / read / close` of the exact size (the size known from a manifest, as petrel
knows it from its index): the cheapest honest reader. A second reader uses the
Python idiom `open(path, "rb").read()` (one fstat more, plus the file object).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from bench.workload import Budget, Rate, capped_note, quiesce, shard_names

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
READ = "file read (os.open/read/close)"
READ_IDIOM = "file read (open().read())"


def prepare_tree(root: str, count: int, keys: Sequence[str]) -> list[str]:
    """Create `root/shard-XXXX/` directories (untimed); return one path per key."""
    for shard in shard_names(count):
        os.makedirs(os.path.join(root, shard), exist_ok=True)
    return [os.path.join(root, key) for key in keys[:count]]


def write_one(path: str, data: bytes, fsync: bool) -> None:
    fd = os.open(path, _CREATE_FLAGS, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # regular files do not write short; say so if one did
            raise OSError(f"short write to {path}: {written} of {len(data)}")
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_files(
    name: str,
    paths: Sequence[str],
    pool: Sequence[bytes],
    *,
    fsync: bool,
    threads: int,
    budget: Budget,
) -> Rate:
    """Write `paths` (up to the budget) with `threads` threads pulling from one queue."""
    wanted = min(len(paths), budget.count_max)
    shared = iter(range(wanted))  # next() on a range iterator is atomic under the GIL
    counts = [0] * threads
    start = quiesce()
    deadline = budget.deadline(start)

    def worker(slot: int) -> None:
        done = 0
        for i in shared:
            write_one(paths[i], pool[i % len(pool)], fsync)
            done += 1
            if time.perf_counter() > deadline:
                break
        counts[slot] = done

    if threads == 1:
        worker(0)
    else:
        workers = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    seconds, cpu = start.elapsed()
    done = sum(counts)
    return Rate(
        name,
        done,
        seconds,
        len(pool[0]),
        threads,
        capped_note(done, wanted, budget),
        cpu_seconds=cpu,
    )


def read_files(paths: Sequence[str], order: Sequence[int], size_bytes: int) -> Rate:
    """os.open / os.read(size) / os.close, in `order`; single thread."""
    bad = 0
    start = quiesce()
    for i in order:
        fd = os.open(paths[i], os.O_RDONLY)
        try:
            data = os.read(fd, size_bytes)
        finally:
            os.close(fd)
        bad += len(data) != size_bytes
    seconds, cpu = start.elapsed()
    if bad:
        raise AssertionError(f"{bad} short file reads")
    return Rate(READ, len(order), seconds, size_bytes, cpu_seconds=cpu)


def read_files_idiom(paths: Sequence[str], order: Sequence[int], size_bytes: int) -> Rate:
    """`with open(path, "rb") as f: f.read()`, in `order`; single thread."""
    bad = 0
    start = quiesce()
    for i in order:
        with open(paths[i], "rb") as handle:
            data = handle.read()
        bad += len(data) != size_bytes
    seconds, cpu = start.elapsed()
    if bad:
        raise AssertionError(f"{bad} short file reads")
    return Rate(READ_IDIOM, len(order), seconds, size_bytes, cpu_seconds=cpu)
