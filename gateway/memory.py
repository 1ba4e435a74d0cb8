"""Giving freed heap memory back to the operating system, now and then.

glibc's malloc keeps what a process frees for its next allocations. A serving process
frees large amounts in bursts: RocksDB drops a memtable after each flush (tens of MiB
of arena blocks), a reader's secondary index drops the memtables it replayed, batch
answers of many MiB come and go. What glibc keeps stays resident, so the gateway's
RSS climbs to the highest point such bursts ever reached together and stays there,
though nothing uses it (a 10-minute mixed soak: +17% RSS over its second half, no
object of petrel's growing).

`malloc_trim(0)` hands free pages of every arena back (MADV_DONTNEED on whole free
pages; live allocations are not moved). It runs in a worker thread (ctypes releases
the GIL) every `interval_s`, and takes a few milliseconds. Where there is no glibc
(musl, macOS), this does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from petrel.allocator import LIBC

log = logging.getLogger("petrel.gateway")


MALLOC_TRIM: Callable[[int], int] | None = None if LIBC is None else LIBC.malloc_trim


async def trim_periodically(interval_s: float) -> None:
    """Until cancelled: malloc_trim(0) every `interval_s` seconds (0: never)."""
    trim = MALLOC_TRIM
    if trim is None or interval_s <= 0:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        try:
            await loop.run_in_executor(None, trim, 0)
        except Exception:
            log.exception("malloc_trim failed")
            return
