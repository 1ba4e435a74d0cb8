"""Segment files on local disk: the active segment being appended to, scanning a
segment's records (replay, sealing, rebuild), and sealing (footer + fsync).

A local segment file lives at ``<data>/segments/<id as 16 hex digits>.seg`` until it is
sealed and uploaded; after that the backend holds it under `format.segment_blob_name`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from petrel import format as fmt
from petrel.errors import CorruptionError

log = logging.getLogger("petrel.segments")

_IOV_MAX = 1024
# What preadv answers for a flag the filesystem or kernel does not support.
_NOWAIT_REFUSED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class NowaitReads:
    """Reads that never wait for the disk: preadv with RWF_NOWAIT, which fails with
    EAGAIN when the bytes are not all in the page cache, so an event loop can read a
    warm file inline and hand only cold reads to a worker thread.

    Some filesystems refuse the flag (tmpfs answers EOPNOTSUPP; kernels without it,
    EINVAL). The first refusal turns these reads off for this instance (its files are
    under one root) and every read goes to the worker thread, as a page-cache miss does:
    a filesystem that refuses the flag may be a disk, where an inline pread could stall
    the loop; on tmpfs the cost is only a thread hop. `what` names the files in the log.
    """

    def __init__(self, what: str) -> None:
        self.flag: int | None = getattr(os, "RWF_NOWAIT", None)
        self._what = what

    @property
    def on(self) -> bool:
        return self.flag is not None

    def read(self, fd: int, buffer: bytearray | memoryview, offset: int) -> bool:
        """Fill `buffer` from `fd` at `offset` if that needs no disk read; False if it
        would, or if the filesystem refuses such reads (off from then on)."""
        if self.flag is None:
            return False
        try:
            count = os.preadv(fd, [buffer], offset, self.flag)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in _NOWAIT_REFUSED:
                raise
            log.info("the filesystem of %s refuses RWF_NOWAIT (%s); reading them in worker "
                     "threads", self._what, os.strerror(exc.errno or 0))
            self.flag = None
            return False
        return count == len(buffer)


def local_segment_path(directory: str, segment_id: int) -> str:
    return os.path.join(directory, f"{segment_id:016x}.seg")


class LocalFile(NamedTuple):
    """A segment's file as the serving process sees it: an absolute path, and the
    device and inode a client compares with what it opens, so a client on another
    machine (or in another mount namespace) never reads a file that only has the same
    name."""

    path: str
    device: int
    inode: int


def stat_local_file(path: str) -> LocalFile | None:
    """The LocalFile at `path`, None if there is no file there (any more)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return LocalFile(os.path.abspath(path), status.st_dev, status.st_ino)


def list_local_segments(directory: str) -> list[int]:
    ids = []
    for name in os.listdir(directory):
        stem, dot, ext = name.partition(".")
        if dot and ext == "seg" and len(stem) == 16:
            try:
                ids.append(int(stem, 16))
            except ValueError:
                continue
    return sorted(ids)


class ActiveSegment:
    """A segment open for appends. Offsets are reserved on the event loop thread
    (`reserve`); bytes are written and synced by the commit thread (`write`), at their
    reserved offsets, so a reader never sees a record before the index points at it."""

    def __init__(self, path: str, segment_id: int, *, create_ms: int | None = None) -> None:
        self.path = path
        self.segment_id = segment_id
        if create_ms is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            header = fmt.encode_segment_header(fmt.SegmentHeader(segment_id, create_ms))
            try:
                written = os.pwrite(fd, header, 0)
                if written != len(header):  # a short write: only ENOSPC does that here
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            except OSError:
                # A disk full at creation must not leave a headerless file behind.
                os.close(fd)
                os.unlink(path)
                raise
            self.tail = len(header)
        else:
            fd = os.open(path, os.O_RDWR)
            self.tail = os.fstat(fd).st_size
        self.fd = fd
        self.durable = 0 if create_ms is not None else self.tail
        self._pending: list[bytes] = []
        self._pending_start = self.tail
        self.closed = False

    def reserve(self, record: fmt.EncodedRecord) -> int:
        offset = self.tail
        self._pending.extend(record.parts)
        self.tail += record.length
        return offset

    def take_pending(self) -> tuple[int, list[bytes], int]:
        """(start offset, buffers, end offset) of everything reserved since the last
        take; the caller writes them with `write`."""
        start, parts, end = self._pending_start, self._pending, self.tail
        self._pending = []
        self._pending_start = self.tail
        return start, parts, end

    def unreserve(self, record: fmt.EncodedRecord) -> None:
        """Take back the last `reserve` (its writer failed before waiting on it).
        Event-loop thread only, before the commit loop took the bytes."""
        count = len(record.parts)
        assert tuple(self._pending[-count:]) == tuple(record.parts), "not the last reservation"
        del self._pending[-count:]
        self.tail -= record.length

    def write(self, start: int, parts: list[bytes], end: int) -> None:
        """Write reserved bytes at their offsets (no sync: see `sync`). Thread: commit.
        Raises OSError (ENOSPC when the disk is full); bytes may then be partly written,
        and the caller cuts them off with `truncate`."""
        position = start
        for first in range(0, len(parts), _IOV_MAX):
            chunk = parts[first : first + _IOV_MAX]
            expected = sum(len(p) for p in chunk)
            written = os.pwritev(self.fd, chunk, position)
            if written != expected:  # short write: finish it the slow way
                data = b"".join(chunk)[written:]
                while data:
                    count = os.pwrite(self.fd, data, position + written)
                    written += count
                    data = data[count:]
            position += expected
        assert position == end, (position, end)

    def sync(self, end: int, *, sync: bool) -> None:
        """Make the bytes written up to `end` durable (fdatasync when `sync`; the NONE
        durability mode skips it). Thread: commit. An OSError here must not be retried:
        the kernel may have dropped the dirty pages it failed to write back."""
        if sync:
            os.fdatasync(self.fd)
        self.durable = end

    def truncate(self, length: int, *, sync: bool) -> None:
        """Cut the file back to `length`, the end of its last committed record, after
        a failed write: the bytes past it were never acknowledged, and a whole record
        among them must not be replayed as valid after a crash, so the cut is synced
        (when `sync`) before any later write is acknowledged. Thread: commit."""
        os.ftruncate(self.fd, length)
        if sync:
            os.fsync(self.fd)

    def discard_reserved(self, length: int | None = None) -> None:
        """Forget every reservation past `length` (default: those not yet taken by a
        commit), after a failed commit whose writers, and the next commit's, were
        failed. The file itself is cut by `truncate`. Event-loop thread only."""
        if length is None:
            length = self._pending_start
        assert self.durable <= length <= self.tail, (self.durable, length, self.tail)
        self._pending = []
        self._pending_start = length
        self.tail = length

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class SealedFiles:
    """Open read handles of sealed segments that live as local files (the local
    backend), at most `limit` at a time, least recently used closed first.

    `read_cached` never waits for the disk (NowaitReads): it answers None when the
    bytes are not all in the page cache, so the event loop never stalls on a cold read
    (the caller then reads in a worker thread). Event-loop thread only.
    """

    def __init__(self, path_of: Callable[[str], str], limit: int) -> None:
        self._path_of = path_of
        self._limit = limit
        self._files: OrderedDict[int, BinaryIO] = OrderedDict()
        self._nowait = NowaitReads("sealed segments")

    def file(self, segment_id: int) -> BinaryIO:
        """The open file of a segment (opened and cached now if it is not). Raises
        FileNotFoundError."""
        handle = self._files.get(segment_id)
        if handle is not None:
            self._files.move_to_end(segment_id)
            return handle
        path = self._path_of(fmt.segment_blob_name(segment_id))
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - cached, closed on evict
        self._files[segment_id] = handle
        while len(self._files) > self._limit:
            self._files.popitem(last=False)[1].close()
        return handle

    def read_cached(self, segment_id: int, offset: int, length: int) -> bytearray | None:
        """The bytes if the page cache holds them all; None if reading would block, or
        the filesystem does not support non-blocking reads (read in a worker thread
        then). Raises FileNotFoundError if the segment file is gone. The buffer read
        into is returned as it is, not copied into bytes: the caller copies the payload
        out of it once, verified (format.verified_payload)."""
        if not self._nowait.on:
            return None
        handle = self.file(segment_id)
        buffer = bytearray(length)
        return buffer if self._nowait.read(handle.fileno(), buffer, offset) else None

    def forget(self, segment_id: int) -> None:
        handle = self._files.pop(segment_id, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()


@dataclass(slots=True)
class ScanResult:
    """What `scan_records` found: the records, where valid data ends (the end of the
    last good record), and any corrupt ranges it skipped: whole records whose header
    checked out but body did not, and bytes with no valid header up to a valid record
    (so not a torn tail)."""

    records: list[tuple[int, fmt.Record]] = field(default_factory=list)
    valid_end: int = fmt.SEGMENT_HEADER_BYTES
    corrupt_ranges: list[tuple[int, int]] = field(default_factory=list)


def scan_records(buf: bytes | memoryview | mmap.mmap, start: int, end: int,
                 result: ScanResult | None = None, *, payloads: bool = False,
                 consumed: Callable[[int], None] | None = None) -> ScanResult:
    """Decode records in buf[start:end], telling a torn tail from corruption:

    - a record whose header checks out but whose bytes end early is a torn tail:
      scanning stops and `valid_end` marks where to cut. Its payload is never searched
      (it is user bytes, and may hold something that decodes as a record);
    - a record whose header checks out but whose body does not is corruption: its
      declared length is trusted, the whole record is skipped and reported;
    - a header that does not check out loses the framing: the next valid record is
      searched for. None is a torn tail; one found is corruption, the bytes up to it
      are skipped and reported, the rest is kept.

    `consumed`, when given, is called with increasing offsets as the scan finishes with
    the bytes before them: it never reads them again, and the records it returns are
    copies, not views of `buf`. `scan_file` drops the pages of its mapping behind it.
    """
    # Payloads are verified but not kept unless asked for: replaying a 1 GiB tail must
    # not hold 1 GiB of copies.
    result = result or ScanResult(valid_end=start)
    view = memoryview(buf)[:end]
    position = start
    while position < end:
        try:
            record = fmt.decode_record(view, position, payload=payloads)
        except fmt.CorruptRecord as exc:
            # Log the message, not the exception: a handler that keeps records (pytest's
            # capture, MemoryHandler) would keep its traceback, whose frames hold views
            # of `buf`, and closing the caller's mmap would then raise BufferError.
            reason = str(exc)
            following = _resume_at(view, position, exc, consumed)
            if following is None:
                if not isinstance(exc, fmt.TruncatedRecord):
                    log.warning("segment tail cut at %d: %s", position, reason)
                break
            log.error("corrupt bytes %d..%d skipped: %s", position, following, reason)
            result.corrupt_ranges.append((position, following))
            position = following
            continue
        result.records.append((position, record))
        position += record.length
        result.valid_end = position
        if consumed is not None:
            consumed(position)
    view.release()
    return result


def _resume_at(view: memoryview, position: int, exc: fmt.CorruptRecord,
               consumed: Callable[[int], None] | None) -> int | None:
    """Where scanning goes on after the bad record at `position`; None: a torn tail."""
    if isinstance(exc, fmt.TruncatedRecord):
        # Its header checked out, or the bytes end inside it (too few left to hold any
        # record): an append cut short. Searching its payload, user bytes, could find a
        # record planted there.
        return None
    if isinstance(exc, fmt.CorruptRecordBody):
        return position + exc.length  # the header checked out: the framing holds
    return fmt.find_next_record(view, position, consumed)  # the framing is lost: resync


# How much of a segment a scan leaves mapped before dropping it: without this, sealing
# a 256 MiB segment held every page it had read in the process (as RssFile) until the
# scan ended. Resident bytes stay within this plus the record being decoded (at most a
# few KiB over `pack_threshold_bytes`) plus a resync search window. Not a `Limits`
# field: it bounds no input, and only trades madvise calls (one per step) for RSS.
_SCAN_DROP_STEP_BYTES = 8 * 1024 * 1024


class _DropBehind:
    """`scan_records`' `consumed` hook for a read-only file mapping: every
    `_SCAN_DROP_STEP_BYTES`, unmaps the pages the scan has finished with.

    MADV_DONTNEED on a file mapping only removes its page-table entries: the page cache
    keeps the data (the upload after a seal still reads it from memory), and a page
    touched again is mapped again from the up-to-date file (madvise(2): "repopulating
    the memory contents from the up-to-date contents of the underlying mapped file").
    The mapping is read-only, so no write can be lost; a dropped page read again is only
    a page fault, never wrong bytes.
    """

    def __init__(self, mapped: mmap.mmap) -> None:
        self._mapped = mapped
        self._dropped = 0  # page-aligned: everything before it is unmapped

    def __call__(self, position: int) -> None:
        if position - self._dropped < _SCAN_DROP_STEP_BYTES:
            return
        until = position - position % mmap.PAGESIZE  # keep the page `position` is in
        try:
            self._mapped.madvise(mmap.MADV_DONTNEED, self._dropped, until - self._dropped)
        except OSError as exc:  # e.g. EINVAL for locked pages (mlockall): only RSS suffers
            log.info("cannot drop a scanned segment's pages (%s); keeping them mapped",
                     os.strerror(exc.errno or 0))
            self._dropped = len(self._mapped)  # do not try again for this file
            return
        self._dropped = until


def scan_file(path: str, start: int = fmt.SEGMENT_HEADER_BYTES, *,
              sealed: bool = False) -> tuple[fmt.SegmentHeader, ScanResult]:
    """Scan a local segment file's records from `start` (for a sealed file, up to its
    footer table). Raises CorruptSegment if the header (or a sealed footer) is bad.

    The file is mapped whole, but the pages the scan has passed are dropped as it goes:
    at most about `_SCAN_DROP_STEP_BYTES` (8 MiB) plus one record stays resident."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < fmt.SEGMENT_HEADER_BYTES:
            raise fmt.CorruptSegment(f"{path}: {size} bytes, shorter than a header")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            header = fmt.decode_segment_header(mapped[: fmt.SEGMENT_HEADER_BYTES])
            end = size
            if sealed:
                end = fmt.decode_trailer(mapped[size - fmt.TRAILER_BYTES :]).table_offset
            result = scan_records(mapped, max(start, fmt.SEGMENT_HEADER_BYTES), end,
                                  consumed=_DropBehind(mapped))
    return header, result


def footer_entries(segment_id: int, records: list[tuple[int, fmt.Record]]
                   ) -> list[fmt.FooterEntry]:
    entries = []
    for offset, record in records:
        size = record.object_size
        location = fmt.Location(segment_id, offset, record.length, record.checksum)
        entries.append(fmt.FooterEntry(record.key, fmt.entry_for_record(record, location,
                                                                          size)))
    return entries


@dataclass(frozen=True, slots=True)
class SealResult:
    segment_id: int
    size_bytes: int
    records: int
    corrupt_ranges: list[tuple[int, int]]


def seal_file(path: str) -> SealResult:
    """Append the footer to a local segment whose writes have all completed, then fsync.

    The records are re-read and verified first, so corruption is caught before the
    segment is uploaded; a torn tail is cut. Idempotent: a sealed file is left alone.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        tail = os.pread(handle.fileno(), fmt.TRAILER_BYTES, max(0, size - fmt.TRAILER_BYTES))
    try:
        trailer = fmt.decode_trailer(tail)
    except CorruptionError:
        trailer = None
    if trailer is not None:
        header, result = scan_file(path, sealed=True)
        return SealResult(header.segment_id, size, len(result.records), result.corrupt_ranges)
    header, result = scan_file(path)
    footer = fmt.encode_footer(footer_entries(header.segment_id, result.records),
                               result.valid_end)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, result.valid_end)
        os.pwrite(fd, footer, result.valid_end)
        os.fsync(fd)
    finally:
        os.close(fd)
    return SealResult(header.segment_id, result.valid_end + len(footer), len(result.records),
                      result.corrupt_ranges)


def read_footer(reader: Callable[[int, int], bytes], size: int, segment_id: int
                ) -> list[fmt.FooterEntry]:
    """A sealed segment's footer table, read through `reader(offset, length)` (a
    local pread or a backend's get_range)."""
    if size < fmt.SEGMENT_HEADER_BYTES + fmt.TRAILER_BYTES:
        raise fmt.CorruptSegment(f"segment {segment_id:x}: too short to be sealed")
    trailer = fmt.decode_trailer(reader(size - fmt.TRAILER_BYTES, fmt.TRAILER_BYTES))
    if trailer.table_offset + trailer.table_length + fmt.TRAILER_BYTES != size:
        raise fmt.CorruptSegment(f"segment {segment_id:x}: footer does not end the file")
    table = reader(trailer.table_offset, trailer.table_length)
    return fmt.decode_footer_table(table, trailer, segment_id)


def iter_footer_records(entries: list[fmt.FooterEntry]) -> Iterator[fmt.FooterEntry]:
    """Footer entries in segment order (by offset), for copying live records forward."""
    return iter(sorted(entries, key=lambda e: e.entry.location.offset))
