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

The gateway's reader processes tune with SERVER_THRESHOLD_BYTES for both (8 MiB): they
hand freed memory back every `memory_trim_interval_s` anyway (petrel_gateway.memory), so
they need keep only what one burst of work frees. Untuned, a reader answering warm batch
gets from the S3 backend's read cache took 1.3-1.9 page faults per object read, the top
of its heap given back and taken again for every batch
(bench/results/backend-2026-11-24-allocator.md). The primary is left to glibc's own
adjustment (which the read cache's 4 MiB fetches raise as far): with 64 MiB, as the
client keeps, the median RSS in the gateway's memory test grew 69 -> 97 MiB
(tests/reliability/test_soak.py, whose gateway pins glibc's thresholds through
GLIBC_TUNABLES: settings from the environment are never overridden).
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
# The gateway's reader processes: above a read-cache block (4 MiB by default) and what
# one batch answer frees.
SERVER_THRESHOLD_BYTES = 8 * 1024 * 1024
ENV_SWITCH = "PETREL_MALLOC_TUNING"
_THRESHOLD_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                        "MALLOC_MMAP_MAX_")

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


def configured_by_environment() -> bool:
    """Whether the environment tunes glibc's malloc (a glibc.malloc.* tunable in
    GLIBC_TUNABLES, or one of the variables for what `tune` sets): an operator's or a
    test's settings win over these."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or \
        any(name in os.environ for name in _THRESHOLD_VARIABLES)


def tune(trim_threshold_bytes: int = TRIM_THRESHOLD_BYTES,
         mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Apply the settings once per process (the first call's); True if they are in force
    (glibc, not turned off with PETREL_MALLOC_TUNING=0, and the environment sets no
    malloc parameter of its own). Setting either threshold turns off glibc's own
    adjustment of both, so both are set."""
    global _tuned
    if _tuned:
        return True
    if LIBC is None or os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false",
                                                                          "no", "off") \
            or configured_by_environment():
        return False
    _tuned = bool(LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and \
        bool(LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes))
    return _tuned
