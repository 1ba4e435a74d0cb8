"""Recording concurrent S3 operations and checking the history against S3's
consistency promise (strong read-after-write, no lost updates, listings that match).

Every operation is recorded with its start and end (`time.monotonic()` on the client:
one clock for every client thread) and, for objects, a value id: the SHA-256 of the
bytes written or read. Writers write unique bytes, so a value id names exactly one
write. A DELETE is a write of "absent" (`ABSENT`); a listing is a read of presence
only (`PRESENT` or `ABSENT` per key).

Per key, the object is a register. A write W *supersedes* a write V before time t when
W was acknowledged, started after V ended, and ended before t: from t on, V can no
longer be the current value. `check` reports:

* a read whose value no write produced (a torn, corrupt or invented value);
* a stale read: the value it returned (or absence, or presence) comes only from writes
  that started after the read ended or were superseded before the read started. This
  covers read-after-write (a read starting after a write's acknowledgement sees it or
  a later write) and lost updates (a final read after quiescence is an ordinary read
  whose start follows every write);
* a read going back in time: a read that starts after another read ended returns a
  write that ended before the first read's write started;
* a listed key that no write ever named.

A write that was not acknowledged (error, timeout, connection lost) may or may not have
taken effect, at any time after it started: it is a possible value for every later
read, and it never supersedes anything.

The checker is pure and bounded: O(n log n) per key.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

ABSENT = None
PRESENT = "*present*"  # a listing saw the key, value unknown
INITIAL = "*initial*"  # the write every key starts with: absent, before time began


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    value: str | None  # value id (sha256 hex) or ABSENT for a delete
    start: float
    end: float
    acked: bool
    op: str = "put"  # put, delete, batch-put, ... (for messages)
    client: int = -1

    @property
    def effective_end(self) -> float:
        """When the write is known to have taken effect; never for an unacknowledged one."""
        return self.end if self.acked else math.inf


@dataclass(frozen=True, slots=True)
class Read:
    key: str
    value: str | None  # value id, ABSENT, or PRESENT
    start: float
    end: float
    op: str = "get"
    client: int = -1


@dataclass(slots=True)
class History:
    writes: list[Write]
    reads: list[Read]
    # Keys that may exist at all; a listing that shows another key is a violation.
    universe: frozenset[str] = frozenset()

    def __init__(self, universe: Iterable[str] = ()) -> None:
        self.writes = []
        self.reads = []
        self.universe = frozenset(universe)

    def write(self, item: Write) -> None:
        self.writes.append(item)

    def read(self, item: Read) -> None:
        self.reads.append(item)

    def listing(self, keys: Iterable[str], start: float, end: float, op: str = "list",
                client: int = -1, prefix: str = "") -> None:
        """A complete listing (every page) of the keys under `prefix`: each key of the
        universe under the prefix becomes a presence read, and a listed key outside the
        universe a read of a value nobody wrote."""
        listed = set(keys)
        for key in self.universe | listed:
            if key.startswith(prefix):
                self.read(Read(key, PRESENT if key in listed else ABSENT, start, end, op,
                               client))


class _KeyWrites:
    """One key's writes, indexed for the supersession query."""

    def __init__(self, writes: list[Write]) -> None:
        initial = Write("", ABSENT, -math.inf, -math.inf, True, INITIAL)
        self.all = [initial, *writes]
        self.by_value: dict[str | None, list[Write]] = defaultdict(list)
        for write in self.all:
            self.by_value[write.value].append(write)
        self.present = [w for w in self.all if w.value is not ABSENT]
        acked = sorted((w for w in self.all if w.acked), key=lambda w: w.start)
        self.acked_starts = [w.start for w in acked]
        # suffix_min_end[i]: the earliest end among acked writes starting at or after
        # acked_starts[i].
        self.suffix_min_end = [math.inf] * (len(acked) + 1)
        for i in range(len(acked) - 1, -1, -1):
            self.suffix_min_end[i] = min(acked[i].end, self.suffix_min_end[i + 1])

    def superseded_before(self, write: Write, time: float) -> bool:
        """Some acknowledged write started after `write` ended and ended before `time`."""
        end = write.effective_end
        if end == math.inf:
            return False
        i = bisect.bisect_right(self.acked_starts, end)
        return self.suffix_min_end[i] < time

    def candidates(self, value: str | None) -> list[Write]:
        if value == PRESENT:
            return self.present
        return self.by_value.get(value, [])


def _describe(read: Read) -> str:
    value = "absent" if read.value is ABSENT else read.value[:12]
    return (f"{read.op} by client {read.client} of {read.key!r} "
            f"[{read.start:.6f}, {read.end:.6f}] returned {value}")


def check(history: History) -> list[str]:
    """Every violation found, as one line each (empty: the history is consistent)."""
    problems: list[str] = []
    writes_by_key: dict[str, list[Write]] = defaultdict(list)
    for write in history.writes:
        if write.end < write.start:
            raise ValueError(f"write ends before it starts: {write}")
        writes_by_key[write.key].append(write)
    reads_by_key: dict[str, list[Read]] = defaultdict(list)
    for read in history.reads:
        if read.end < read.start:
            raise ValueError(f"read ends before it starts: {read}")
        reads_by_key[read.key].append(read)
    for key, reads in reads_by_key.items():
        index = _KeyWrites(writes_by_key.get(key, []))
        if history.universe and key not in history.universe and any(
                r.value is not ABSENT for r in reads):
            problems.append(f"key {key!r} was seen but no client ever wrote it")
            continue
        problems.extend(_check_reads(index, reads))
        problems.extend(_check_monotonic(index, reads))
    return problems


def _check_reads(index: _KeyWrites, reads: list[Read]) -> list[str]:
    problems = []
    for read in reads:
        candidates = index.candidates(read.value)
        if not candidates:
            problems.append(f"{_describe(read)}: a value no write produced")
            continue
        possible = [w for w in candidates if w.start < read.end
                    and not index.superseded_before(w, read.start)]
        if not possible:
            problems.append(f"{_describe(read)}: stale (every write of that value had "
                            "been overwritten before the read started, or started after "
                            "it ended)")
    return problems


def _check_monotonic(index: _KeyWrites, reads: list[Read]) -> list[str]:
    """A read must not return a write that ended before the write an earlier
    (completed) read returned had started."""
    concrete: list[tuple[Read, Write]] = []
    for read in reads:
        if read.value is ABSENT or read.value == PRESENT:
            continue  # absence and presence do not name one write
        found = index.by_value.get(read.value)
        if found and len(found) == 1:
            concrete.append((read, found[0]))
    by_end = sorted(concrete, key=lambda pair: pair[0].end)
    ends = [pair[0].end for pair in by_end]
    prefix_max: list[tuple[float, Read | None]] = [(-math.inf, None)]
    for read, write in by_end:
        prefix_max.append(max(prefix_max[-1], (write.start, read), key=lambda t: t[0]))
    problems = []
    for read, write in concrete:
        count = bisect.bisect_left(ends, read.start)  # reads that ended before this started
        latest_start, earlier = prefix_max[count]
        if earlier is not None and write.acked and write.end < latest_start:
            problems.append(f"{_describe(read)}: went back in time (an earlier read, "
                            f"{_describe(earlier)}, saw a newer write)")
    return problems
