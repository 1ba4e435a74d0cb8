"""glibc malloc settings for processes that move many objects of 1 KiB-1 MiB.

By default glibc gives the top of the heap back to the OS as soon as 128 KiB of it is
free (M_TRIM_THRESHOLD), and serves every allocation over 128 KiB with its own mmap
(M_MMAP_THRESHOLD, raised dynamically only as large blocks are freed). A batch of a
thousand 10 KiB objects, allocated and then freed together, is handed back after every
batch and taken again, page by page, for the next: each page is a fault. On the 2-core
VM these numbers come from, copying 10 KiB into fresh bytes cost 7.9 us that way and
1.9 us with the settings below (bench/results/loader-2026-11-24-allocator.md).

`tune()` keeps up to TRIM_THRESHOLD_BYTES of free heap for reuse and serves blocks up to
MMAP_THRESHOLD_BYTES (a batch answer) from the heap. `petrel.Client` calls it when it is
created; PETREL_MALLOC_TUNING=0 leaves the allocator as it is. Without glibc this does
nothing.

The gateway does not tune: its resident memory must stay flat under load, and with
these settings it holds up to 64 MiB more of freed heap between its periodic trims
(tests/reliability/test_soak.py failed on it: median RSS 69 -> 97 MiB). It hands freed
memory back every `memory_trim_interval_s` instead (petrel_gateway.memory).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
ENV_SWITCH = "PETREL_MALLOC_TUNING"

_tuned = False


def _libc() -> Any:
    # The process's own symbols: libc is loaded already. (ctypes.util.find_library
    # would run ldconfig in a subprocess, ~10 ms on every import of petrel.client.)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - present in glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


LIBC = _libc()


def tune() -> bool:
    """Apply the settings once per process; True if they are in force (glibc, and not
    turned off with PETREL_MALLOC_TUNING=0)."""
    global _tuned
    if _tuned:
        return True
    if LIBC is None or os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false",
                                                                          "no", "off"):
        return False
    _tuned = bool(LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _tuned
