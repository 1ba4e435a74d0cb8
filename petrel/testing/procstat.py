"""Resource readings of a process from /proc (Linux): resident memory and open file
descriptors, for soak and hostile-input checks that a gateway's resources stay bounded."""

from __future__ import annotations

import os


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS). Raises ProcessLookupError if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    raise ProcessLookupError(pid)


def open_fds(pid: int) -> int:
    """Open file descriptors (entries of /proc/PID/fd)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
