"""How much more a write into memory the machine has not used lately costs than a write
into memory it just freed: a fact of the machine that every benchmark here is subject
to, measured directly.

    python -m bench.first_touch [--mib 480] [--dir DIR]

Writes `--mib` MiB of new 4 MiB files into DIR (the page cache takes fresh pages),
deletes them, writes them again at once (the pages just freed come back), and writes
one byte per page of a new anonymous mapping twice (the first round takes a page fault per
page, the second none: the price of a fresh anonymous page). On bare
metal both rounds cost about the same. In a VM whose balloon device reports free pages
to the host (virtio-balloon free page reporting: Firecracker, QEMU), the host takes
pages the guest freed a few seconds ago away, and the guest's first write to each
faults on the host: the first round then costs several times the second. Prints both
rates and their ratio.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

_FILE_BYTES = 4 * 1024 * 1024


def _timed(work: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `work`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def write_files(directory: str, count: int, data: bytes) -> None:
    for index in range(count):
        fd = os.open(os.path.join(directory, f"{index}"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def touch_pages(buffer: mmap.mmap) -> None:
    for offset in range(0, len(buffer), 4096):
        buffer[offset] = 1


def file_count(mib: int) -> int:
    """How many 4 MiB files a round of `mib` MiB writes (at least one)."""
    return max(1, mib * 1024 * 1024 // _FILE_BYTES)


def measure(mib: int = 480, directory: str | None = None) -> list[tuple[str, float, float]]:
    """(round, wall seconds, CPU seconds) for the four rounds, `mib` MiB each."""
    count = file_count(mib)
    data = os.urandom(_FILE_BYTES)
    work = tempfile.mkdtemp(prefix="petrel-first-touch-", dir=directory)
    rows = []
    try:
        for round_name in ("first", "again"):
            wall, cpu = _timed(lambda: write_files(work, count, data))
            for name in os.listdir(work):
                os.unlink(os.path.join(work, name))
            rows.append((f"page cache, {round_name}", wall, cpu))
        buffer = mmap.mmap(-1, count * _FILE_BYTES)  # mapped, no page of it written yet
        for round_name in ("first", "again"):
            wall, cpu = _timed(lambda: touch_pages(buffer))
            rows.append((f"anonymous memory, {round_name}", wall, cpu))
        buffer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def page_cache_first_cost(rows: list[tuple[str, float, float]]) -> float:
    """How many times the CPU of a write into recycled page cache a first write costs."""
    return rows[0][2] / max(rows[1][2], 1e-9)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_touch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=480)
    parser.add_argument("--dir", default=None, help="where the files go (default: a "
                        "temporary directory under TMPDIR)")
    args = parser.parse_args(argv)
    rows = measure(args.mib, args.dir)
    total_mib = file_count(args.mib) * _FILE_BYTES / 2**20
    print(f"{total_mib:.0f} MiB written per round")
    print("| round | MiB/s | CPU s |")
    print("|---|---:|---:|")
    for name, wall, cpu in rows:
        print(f"| {name} | {total_mib / wall:,.0f} | {cpu:.3f} |")
    for kind, first, again in (("page cache", rows[0], rows[1]),
                               ("anonymous memory", rows[2], rows[3])):
        print(f"- {kind}: the first write costs {first[2] / max(again[2], 1e-9):.1f}x "
              "the CPU of the second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
