"""Scanning a large segment (sealing, recovery, fsck) keeps few of its pages mapped.

`scan_file` maps the whole file; it used to keep every page it had read mapped until the
scan ended, so each seal of a 256 MiB segment showed as a jump of RssFile (and VmRSS)
by the segment's size. These tests scan a 96 MiB segment, damaged in the middle and
torn at the end, while a thread samples the process's resident memory, and check both
the bound and that the scan still finds exactly the records, corrupt ranges and end it
should.

Sampling, not a hook: a sampler thread reads /proc/self/status while the scan runs
(the GIL is handed over every 0.1 ms), so the test sees what an operator sees, and the
scan needs no hook for it. The old behaviour grows RssFile with the scan's progress, so
any sample after the first sixth of the scan catches it. The last test drives the
page-dropping helper directly, to check that a dropped page read again is the file's.
"""

from __future__ import annotations

import mmap
import os
import random
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from petrel import format as fmt
from petrel.limits import KiB, MiB
from petrel.segments import (
    _SCAN_DROP_STEP_BYTES,
    ActiveSegment,
    _DropBehind,
    scan_file,
    scan_records,
    seal_file,
)

if not os.path.exists("/proc/self/status"):
    pytest.skip("needs /proc/self/status (Linux)", allow_module_level=True)

SEGMENT_BYTES = 96 * MiB
PAYLOAD_BYTES = 16 * KiB
# The bound under test: the scan drops pages every 8 MiB (segments._SCAN_DROP_STEP_BYTES),
# plus a record, a resync window and the kernel's fault-around; the old code reached
# the segment's size.
SCAN_RESIDENT_BYTES_MAX = 16 * MiB
SAMPLES_MIN = 5  # fewer, and the scan was not watched


@dataclass(slots=True)
class Damaged:
    """A segment file and what a scan must find in it."""

    path: str
    records: list[tuple[int, bytes, int]]  # (offset, key, seq) of every intact record
    corrupt_ranges: list[tuple[int, int]]
    valid_end: int  # where the torn last record starts


def build_damaged_segment(directory: Path) -> Damaged:
    """A segment of SEGMENT_BYTES written by petrel's own writer, then damaged: a run of
    records zeroed in the middle (their headers lost: a resync search over ~3 MiB, more
    than one search window), one record's payload byte flipped (its header checks out:
    skipped by its length), and the last record cut short (a torn tail)."""
    path = str(directory / "0000000000000007.seg")
    segment = ActiveSegment(path, 7, create_ms=1)
    body = random.Random(7).randbytes(PAYLOAD_BYTES)
    placed: list[tuple[int, bytes, int]] = []
    ends: dict[int, int] = {}
    while segment.tail < SEGMENT_BYTES:
        seq = len(placed) + 1
        key = b"bkt/k%06d" % seq
        record = fmt.encode_record(flags=0, key=key, meta=b"", payload=body, seq=seq,
                                   mtime_ms=1)
        offset = segment.reserve(record)
        placed.append((offset, key, seq))
        ends[offset] = offset + record.length
        if len(placed) % 512 == 0:
            segment.write(*segment.take_pending())
    segment.write(*segment.take_pending())
    segment.close()

    count = len(placed)
    zeroed = range(count // 2, count // 2 + 3 * MiB // PAYLOAD_BYTES)
    flipped = 3 * count // 4
    torn = count - 1
    zero_start, zero_end = placed[zeroed.start][0], placed[zeroed.stop][0]
    flip_at = placed[flipped][0]
    with open(path, "r+b") as handle:
        handle.seek(zero_start)
        handle.write(bytes(zero_end - zero_start))
        payload_at = flip_at + fmt.RECORD_HEADER_BYTES + len(placed[flipped][1]) + 100
        handle.seek(payload_at)
        byte = handle.read(1)[0]
        handle.seek(payload_at)
        handle.write(bytes([byte ^ 0x40]))
        handle.truncate(ends[placed[torn][0]] - 10)
    skipped = {*zeroed, flipped, torn}
    return Damaged(
        path=path,
        records=[r for i, r in enumerate(placed) if i not in skipped],
        corrupt_ranges=[(zero_start, zero_end), (flip_at, ends[flip_at])],
        valid_end=placed[torn][0],
    )


def resident_bytes() -> tuple[int, int]:
    """(file-backed mapped pages: RssFile + RssShmem (tmpfs files), RssAnon) in bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssFile", "RssShmem", "RssAnon"):
                fields[name] = int(value.split()[0]) * KiB
    return fields["RssFile"] + fields["RssShmem"], fields["RssAnon"]


@dataclass(slots=True)
class Peak:
    """The most resident memory seen above the level before the scan."""

    mapped_bytes: int = 0
    anon_bytes: int = 0
    samples: int = 0
    errors: list[Exception] = field(default_factory=list)


@contextmanager
def watched() -> Iterator[Peak]:
    peak = Peak()
    stop = threading.Event()
    mapped_before, anon_before = resident_bytes()

    def sample() -> None:
        try:
            while not stop.is_set():
                mapped, anon = resident_bytes()
                peak.mapped_bytes = max(peak.mapped_bytes, mapped - mapped_before)
                peak.anon_bytes = max(peak.anon_bytes, anon - anon_before)
                peak.samples += 1
                stop.wait(0.0005)
        except (OSError, KeyError, ValueError) as exc:  # failed in the test, not lost
            peak.errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)  # let the sampler in while the scan holds the GIL
    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        sys.setswitchinterval(interval)
    assert not peak.errors, peak.errors


def check_bounded(peak: Peak) -> None:
    assert peak.samples >= SAMPLES_MIN, f"only {peak.samples} samples: the scan was not watched"
    assert peak.mapped_bytes <= SCAN_RESIDENT_BYTES_MAX, (
        f"{peak.mapped_bytes / MiB:.1f} MiB of the segment mapped at once "
        f"({peak.samples} samples)")
    # Nor copied: the resync search used to copy the whole segment to search it.
    assert peak.anon_bytes <= SCAN_RESIDENT_BYTES_MAX, f"{peak.anon_bytes / MiB:.1f} MiB copied"


def found(records: list[tuple[int, fmt.Record]]) -> list[tuple[int, bytes, int]]:
    return [(offset, record.key, record.seq) for offset, record in records]


@pytest.fixture
def damaged(tmp_path: Path) -> Damaged:
    return build_damaged_segment(tmp_path)


def test_scan_file_keeps_few_pages_mapped(damaged: Damaged) -> None:
    with watched() as peak:
        header, result = scan_file(damaged.path)
    check_bounded(peak)
    assert header.segment_id == 7
    assert found(result.records) == damaged.records
    assert result.corrupt_ranges == damaged.corrupt_ranges
    assert result.valid_end == damaged.valid_end


def test_seal_and_sealed_scan_keep_few_pages_mapped(damaged: Damaged) -> None:
    with watched() as peak:
        sealed = seal_file(damaged.path)
    check_bounded(peak)
    assert sealed.records == len(damaged.records)
    assert sealed.corrupt_ranges == damaged.corrupt_ranges
    assert os.path.getsize(damaged.path) == sealed.size_bytes

    with watched() as peak:  # fsck and recovery scan sealed files up to their footer
        _, result = scan_file(damaged.path, sealed=True)
    check_bounded(peak)
    assert found(result.records) == damaged.records
    assert result.corrupt_ranges == damaged.corrupt_ranges
    assert result.valid_end == damaged.valid_end


def test_a_dropped_page_read_again_holds_the_file_bytes(damaged: Damaged) -> None:
    """What the scan drops is only unmapped: read again through the same mapping, the
    pages come back from the page cache with the file's bytes, and a scan of the file
    read with plain reads (nothing mapped, nothing dropped) finds the same records."""
    with open(damaged.path, "rb") as handle:
        data = handle.read()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            span = 4 * _SCAN_DROP_STEP_BYTES
            assert mapped[:span] == data[:span]  # maps them
            mapped_before, _ = resident_bytes()
            drop = _DropBehind(mapped)
            for position in range(0, span + 1, _SCAN_DROP_STEP_BYTES):
                drop(position)
            mapped_dropped, _ = resident_bytes()
            assert mapped[:span] == data[:span]  # faults them in again
            mapped_again, _ = resident_bytes()
    assert mapped_before - mapped_dropped >= span - MiB
    assert mapped_again - mapped_dropped >= span - MiB
    in_memory = scan_records(data, fmt.SEGMENT_HEADER_BYTES, len(data))
    assert found(in_memory.records) == damaged.records
    assert in_memory.corrupt_ranges == damaged.corrupt_ranges
    assert in_memory.valid_end == damaged.valid_end
