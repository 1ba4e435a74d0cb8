"""The write path: group commit into the active segment, then the index; rolling,
sealing and uploading segments.

A writer encodes its records and calls `Committer.submit`. On the event loop thread each
record gets a seq and an offset in the active segment (`reserve`), then waits. One commit
loop takes everything reserved so far, writes it with one `pwritev` per segment and one
`fdatasync` (in a dedicated thread, so the loop never blocks on the disk), applies the
records to the index in one atomic batch, and wakes the writers. Writers that arrive
while a commit is in flight share the next one: that is group commit.

An fsync failure is not retried (the page cache may have dropped the dirty pages, the
PostgreSQL "fsyncgate" lesson): the committer stops accepting writes and the store must
be reopened, which replays the segment tails from the index's watermark. So does a
failed index write. A disk full (ENOSPC, EDQUOT) while writing, before any fsync, is
different: nothing of the commit is durable or acknowledged, so the segments are cut
back to their last committed record (and the cut synced), the commit's writers get 507
InsufficientStorage, and writes are taken again once the disk has room (checked with
statvfs before each write meanwhile, so a full disk is refused without touching it).

Sealing re-reads and verifies the whole segment to write its footer, in a process of
its own (petrel/sealer.py says why).

A sealed segment's upload that fails is retried with backoff, for ever, and its local
copy is kept (and served) until an upload is verified. Writes go on meanwhile, into new
local segments, until the bytes waiting for upload reach `upload_backlog_bytes_max`;
then they fail with 503 SlowDown until the backend is back and uploads catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from petrel import format as fmt
from petrel import index as ix
from petrel.apply import Applier
from petrel.backends.base import Backend
from petrel.backends.local import fsync_dir
from petrel.errors import (
    InsufficientStorage,
    InternalError,
    PetrelError,
    ServiceUnavailable,
    SlowDown,
    StoreClosed,
)
from petrel.sealer import SealProcess, SealProcessLost
from petrel.segments import ActiveSegment, SealResult, local_segment_path, seal_file
from petrel.settings import Durability, StoreConfig

log = logging.getLogger("petrel.commit")

# (segment, start offset, buffers, end offset): one segment's share of a commit.
_Write = tuple[ActiveSegment, int, list[bytes], int]
_Waiter = tuple[asyncio.Future[list[PetrelError | None]], int, int]

# Out of space, on the disk or in the user's quota.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# RocksDB reports errors as text (its Status), not errno: how it words the same two.
_NO_SPACE_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk is full or the quota exceeded."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE_ERRNOS
    text = str(exc)
    return any(word in text for word in _NO_SPACE_TEXTS)


class WriteNoSpace(Exception):
    """A segment write (pwritev, before any fsync) found the disk full; the segments
    were cut back to where the commit started. `needed_bytes`: what it tried to write."""

    def __init__(self, cause: OSError, needed_bytes: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.needed_bytes = needed_bytes


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Pending:
    """One record to append: its key, encoded bytes and the summary the index keeps."""

    key: bytes
    record: fmt.EncodedRecord
    flags: int
    size: int
    seq: int
    mtime_ms: int
    parts: int = 0
    md5: bytes = fmt.NO_MD5
    meta: bytes = b""


def make_pending(*, key: bytes, flags: int, seq: int, payload: bytes = b"", size: int = 0,
                 meta: bytes = b"", parts: int = 0, md5: bytes = fmt.NO_MD5,
                 mtime_ms: int | None = None) -> Pending:
    mtime = now_ms() if mtime_ms is None else mtime_ms
    record = fmt.encode_record(flags=flags, key=key, meta=meta, payload=payload, seq=seq,
                               mtime_ms=mtime, parts=parts, md5=md5)
    return Pending(key, record, flags, size, seq, mtime, parts, md5, meta)


class SealWorker:
    """Seals in the seal process (petrel/sealer.py), or in a `fallback` thread when
    that process cannot be had: it could not be started, or died during the seal
    (killed with its process group, out of memory). A seal is idempotent, so one the
    process may have half done is simply done again; the next seal starts a new
    process."""

    def __init__(self, fallback: ThreadPoolExecutor, *, in_process: bool) -> None:
        self._fallback = fallback
        self.process = SealProcess() if in_process else None

    async def seal(self, path: str) -> SealResult:
        loop = asyncio.get_running_loop()
        if self.process is not None:
            try:
                return await loop.run_in_executor(self._fallback, self.process.seal, path)
            except SealProcessLost as exc:
                log.warning("%s; sealing %s in a thread", exc, path)
        return await loop.run_in_executor(self._fallback, seal_file, path)

    def close(self) -> None:
        """Stop the seal process, after the seal it may be running (a footer is never
        left half written under a store that reopens)."""
        if self.process is not None:
            self.process.close()


class Committer:
    """Owns the active segment, the commit loop, and segment sealing."""

    def __init__(self, *, config: StoreConfig, index: ix.Index, applier: Applier,
                 segment_dir: str, backend: Backend, io_pool: ThreadPoolExecutor,
                 seq: int, active: ActiveSegment | None,
                 local: dict[int, ActiveSegment],
                 rolled: list[ActiveSegment] | None = None) -> None:
        self.config = config
        self.index = index
        self.applier = applier
        self.segment_dir = segment_dir
        self.backend = backend
        self.io_pool = io_pool
        self.seq = seq
        self.active = active
        # Segments still on local disk (active, or rolled and not yet uploaded): reads of
        # their records are served from these files.
        self.local = local
        self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="petrel-commit")
        self.sealer = SealWorker(io_pool, in_process=config.seal_process)
        self._group: list[fmt.FooterEntry] = []
        self._waiters: list[_Waiter] = []
        self._wakeup = asyncio.Event()
        # Segments that take no more records and are sealed once written (recovery
        # hands over the ones a crash left unsealed).
        self._rolled: list[ActiveSegment] = list(rolled or [])
        self._dir_sync_needed = False
        self._failed: BaseException | None = None
        # Set after a write found the disk full: the free bytes (statvfs) that let
        # writes through again. Cleared by the next write that gets through.
        self._no_space_until_free_bytes: int | None = None
        self._closing = False
        self._last_write = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._seals: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        # Upload outcomes (metrics, tests): verified uploads, and failed attempts.
        self.uploads_done = 0
        self.upload_failures = 0
        self.on_orphans: Callable[[list[tuple[bytes, fmt.Location]]], None] = \
            lambda records: None

    # ----- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        self._spawn(self._seal_when_idle())
        self._seal_rolled()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, *, seal: bool) -> None:
        """Stop accepting writes, commit what is pending, optionally seal the active
        segment (uploading it), and wait for uploads in flight."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await self._runner
        if self._seals:
            # Rolled segments being sealed and uploaded: let them finish, bounded like
            # the active one below (a seal cut short is done again by the next open).
            await asyncio.wait(list(self._seals), timeout=self.config.close_upload_timeout_s)
        if seal and self.active is not None and self.active.tail > fmt.SEGMENT_HEADER_BYTES:
            segment, self.active = self.active, None
            # Bounded: with the backend down the segment stays local, sealed, and the
            # next open uploads it (recovery hands sealed local segments back).
            deadline = time.monotonic() + self.config.close_upload_timeout_s
            await self._seal(segment, retry_until=deadline)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._commit_pool.shutdown(wait=True)
        self.sealer.close()
        for segment in list(self.local.values()):
            segment.close()

    def check_writable(self) -> None:
        """Raise if a write cannot be taken now: StoreClosed, ServiceUnavailable after a
        failed fsync or index write, InsufficientStorage while the disk is still full
        after a write found it full, SlowDown while the upload backlog is full."""
        if self._closing:
            raise StoreClosed()
        if self._failed is not None:
            raise ServiceUnavailable("a write to disk failed; the store is read-only "
                                     f"until it is reopened ({self._failed})")
        if self._no_space_until_free_bytes is not None:
            self._check_space(self._no_space_until_free_bytes)
        backlog = self.upload_backlog_bytes()
        if backlog >= self.config.upload_backlog_bytes_max:
            raise SlowDown(f"{backlog} bytes of segments are waiting for upload to the "
                           f"backend (limit {self.config.upload_backlog_bytes_max}); "
                           "retry later")

    def _check_space(self, needed_bytes: int) -> None:
        """Raise InsufficientStorage unless the segment directory's filesystem has
        `needed_bytes` free; once it has, writes are let through (and find out)."""
        try:
            stat = os.statvfs(self.segment_dir)
        except OSError:
            free = needed_bytes  # cannot tell: let the write find out
        else:
            free = stat.f_bavail * stat.f_frsize
        if free < needed_bytes:
            raise InsufficientStorage(f"the disk holding the data directory is full "
                                      f"({free} bytes free); writes are refused until "
                                      "space is freed.")
        self._no_space_until_free_bytes = None
        log.warning("disk space is back (%d bytes free): taking writes again", free)

    def _no_space(self, exc: BaseException, needed_bytes: int) -> InsufficientStorage:
        """A write found the disk full: refuse writes until `needed_bytes` are free
        (at most the largest packed payload: the smallest write must not wait for
        room for a whole batch)."""
        needed = max(1, min(needed_bytes, self.config.limits.pack_threshold_bytes))
        self._no_space_until_free_bytes = needed
        log.error("disk full, write not stored (%s); writes are refused until %d bytes "
                  "are free", exc, needed)
        return InsufficientStorage("the disk holding the data directory is full; the "
                                   "write was not stored. Writes resume once space is "
                                   "freed.")

    def upload_backlog_bytes(self) -> int:
        """Bytes of segments on local disk that are not (yet) in the backend."""
        return sum(segment.tail for segment in self.local.values())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # ----- submitting --------------------------------------------------------------
    async def submit(self, pendings: list[Pending]) -> list[PetrelError | None]:
        """Append `pendings`, wait until durable (per the durability mode) and applied
        to the index. Returns one error or None per record, in order."""
        self.check_writable()
        loop = asyncio.get_running_loop()
        start = len(self._group)
        reserved: list[tuple[ActiveSegment, fmt.EncodedRecord]] = []
        try:
            for pending in pendings:
                segment = self._segment_for(pending.record.length)
                offset = segment.reserve(pending.record)
                reserved.append((segment, pending.record))
                location = fmt.Location(segment.segment_id, offset, pending.record.length,
                                        pending.record.checksum)
                entry = fmt.Entry(location, pending.flags, pending.size, pending.seq,
                                  pending.mtime_ms, pending.parts, pending.md5,
                                  pending.meta)
                self._group.append(fmt.FooterEntry(pending.key, entry))
        except OSError as exc:  # a new segment file could not be created
            # Take this writer's reservations back: none may be written without it.
            for segment, record in reversed(reserved):
                segment.unreserve(record)
            del self._group[start:]
            if is_no_space(exc):
                raise self._no_space(exc, sum(p.record.length for p in pendings)) from exc
            raise InternalError(f"a segment file could not be created: {exc}") from exc
        future: asyncio.Future[list[PetrelError | None]] = loop.create_future()
        self._waiters.append((future, start, len(self._group)))
        self._last_write = time.monotonic()
        self._wakeup.set()
        return await future

    def _segment_for(self, length: int) -> ActiveSegment:
        active = self.active
        limit = self.config.limits.segment_bytes_max - fmt.TRAILER_BYTES
        if active is not None and active.tail + length > limit \
                and active.tail > fmt.SEGMENT_HEADER_BYTES:
            self._roll()
            active = None
        if active is None:
            active = self._new_segment()
        return active

    def _new_segment(self) -> ActiveSegment:
        segment_id = self.applier.allocate_segment_id()
        path = local_segment_path(self.segment_dir, segment_id)
        segment = ActiveSegment(path, segment_id, create_ms=now_ms())
        self.applier.segments[segment_id] = fmt.SegmentRow(
            segment_id, fmt.SEGMENT_ACTIVE, created_ms=now_ms())
        self.local[segment_id] = segment
        self.active = segment
        self._dir_sync_needed = True
        return segment

    def _roll(self) -> None:
        """The active segment takes no more records; it is sealed once written."""
        if self.active is not None:
            self._rolled.append(self.active)
            self.active = None

    # ----- the commit loop ---------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        window_s = self.config.commit_window_ms / 1000
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._group:
                waiters, self._waiters = self._waiters, []
                for future, _, _ in waiters:  # flush(): nothing to write, all committed
                    if not future.done():
                        future.set_result([])
                if self._closing:
                    return
                continue
            if self.config.durability is Durability.BATCH and window_s > 0:
                await self._gather(window_s)
            group, self._group = self._group, []
            waiters, self._waiters = self._waiters, []
            writes = [(s, *s.take_pending()) for s in self._segments_with_pending()]
            try:
                await loop.run_in_executor(self._commit_pool, self._write, writes)
                errors = self._apply(group, writes)
            except WriteNoSpace as exc:
                self._drop_commit(exc, writes, waiters)
                continue
            except BaseException as exc:
                self._fail(exc, waiters)
                if not isinstance(exc, Exception):
                    raise
                continue
            for future, start, end in waiters:
                if not future.done():
                    future.set_result(errors[start:end])
            self._seal_rolled()

    async def _gather(self, window_s: float) -> None:
        """Group commit's window: wait while writers keep arriving, up to `window_s`.
        Once the group stops growing (every writer already waiting), commit at once:
        waiting longer would only add latency."""
        deadline = time.monotonic() + window_s
        while len(self._group) < self.config.commit_records_max:
            size = len(self._group)
            await asyncio.sleep(0)  # let runnable writers append
            if len(self._group) == size or time.monotonic() >= deadline:
                return

    def _segments_with_pending(self) -> list[ActiveSegment]:
        segments = list(self._rolled)
        if self.active is not None:
            segments.append(self.active)
        return [s for s in segments if s.durable < s.tail]

    def _write(self, writes: list[_Write]) -> None:
        """Write every segment's share, then sync each (thread: commit). A disk full
        while writing raises WriteNoSpace after cutting every segment back to where this
        commit started (and syncing the cut); any other failure leaves it to `_fail`."""
        sync = self.config.durability is not Durability.NONE
        try:
            for segment, start, parts, end in writes:
                segment.write(start, parts, end)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            # Bytes of this commit may be on disk (a short write; whole records among
            # them): unacknowledged, so cut off before any later write is acknowledged.
            # A failure to cut escapes to `_fail`: the store then goes read-only.
            for segment, start, _, _ in writes:
                segment.truncate(start, sync=sync)
            raise WriteNoSpace(exc, sum(end - start for _, start, _, end in writes)) from exc
        for segment, _, _, end in writes:
            segment.sync(end, sync=sync)
        if self._dir_sync_needed and sync:
            self._dir_sync_needed = False
            fsync_dir(self.segment_dir)

    def _apply(self, group: list[fmt.FooterEntry], writes: list[_Write]
               ) -> list[PetrelError | None]:
        segments = self.applier.segments
        for segment, _, _, end in writes:
            row = segments[segment.segment_id]
            segments[segment.segment_id] = replace(row, indexed_bytes=end)
        applied = self.applier.apply(group)
        self.index.kv.write(applied.ops)
        if applied.orphan_records:
            self.on_orphans(applied.orphan_records)
        return applied.errors

    def _drop_commit(self, exc: WriteNoSpace, writes: list[_Write],
                     waiters: list[_Waiter]) -> None:
        """The disk was full: this commit's records were cut off the segments. Fail
        its writers and those of the next commit (their offsets follow the cut-off
        bytes), forget every reservation, and take writes again once there is room."""
        error = self._no_space(exc.cause, exc.needed_bytes)
        starts = {segment.segment_id: start for segment, start, _, _ in writes}
        segments = {segment.segment_id: segment for segment, _, _, _ in writes}
        segments.update((s.segment_id, s) for s in self._rolled)
        if self.active is not None:
            segments[self.active.segment_id] = self.active
        for segment_id, segment in segments.items():
            segment.discard_reserved(starts.get(segment_id))
        self._fail_waiters(waiters, error)
        self._seal_rolled()  # a segment rolled meanwhile may be whole again

    def _fail(self, exc: BaseException, waiters: list[_Waiter]) -> None:
        log.critical("commit failed; refusing writes until reopened: %r", exc)
        self._failed = exc
        error: PetrelError
        if is_no_space(exc):  # a sync or the index found the disk full: read-only too
            error = InsufficientStorage("the disk holding the data directory is full and "
                                        "a write to it failed; the write was not stored, "
                                        "and the store is read-only until it is reopened")
        else:
            error = InternalError(f"the write could not be made durable: {exc}")
        self._fail_waiters(waiters, error)

    def _fail_waiters(self, waiters: list[_Waiter], error: PetrelError) -> None:
        """Fail `waiters` (the commit that failed) and everyone waiting for the next
        one, whose records are dropped too."""
        for future, _, _ in [*waiters, *self._waiters]:
            if not future.done():
                future.set_exception(error)
        self._waiters = []
        self._group = []

    # ----- sealing -----------------------------------------------------------------
    def _seal_rolled(self) -> None:
        for segment in list(self._rolled):
            if segment.durable == segment.tail:
                self._rolled.remove(segment)
                task = asyncio.get_running_loop().create_task(self._seal(segment))
                self._tasks.add(task)
                self._seals.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(self._seals.discard)

    async def wait_for_seals(self) -> None:
        """Wait until every rolled segment is sealed and uploaded (tests, tools)."""
        while self._seals or any(s.durable == s.tail for s in self._rolled):
            self._seal_rolled()
            await asyncio.gather(*list(self._seals))

    async def _seal_when_idle(self) -> None:
        period = max(0.05, min(5.0, self.config.seal_idle_s / 4))
        while True:
            await asyncio.sleep(period)
            active = self.active
            idle = time.monotonic() - self._last_write
            if (active is not None and idle >= self.config.seal_idle_s
                    and active.tail > fmt.SEGMENT_HEADER_BYTES and active.durable == active.tail
                    and not self._group):
                self._roll()
                self._seal_rolled()

    async def _seal(self, segment: ActiveSegment, *, retry_until: float | None = None
                    ) -> None:
        """Footer, fsync, upload, verify, record in the index; then drop the local copy.
        An upload that fails is retried with backoff (until `retry_until`, a monotonic
        time, if given); the local copy stays meanwhile, and for good if it never
        succeeds (the segment is then uploaded by the next open)."""
        result = await self._seal_file(segment, retry_until)
        if result is None:
            log.warning("segment %x not sealed before close (disk full); it stays on "
                        "local disk and is sealed when the store is next opened",
                        segment.segment_id)
            return
        if result.corrupt_ranges:
            log.error("segment %x sealed with corrupt ranges skipped: %s",
                      segment.segment_id, result.corrupt_ranges)
        name = fmt.segment_blob_name(segment.segment_id)
        if not await self._upload_with_retries(segment, name, result.size_bytes,
                                               retry_until):
            log.warning("segment %x not uploaded before close; it stays on local disk "
                        "and is uploaded when the store is next opened", segment.segment_id)
            return
        row = self.applier.segments.get(segment.segment_id)
        if row is not None:
            row = replace(row, state=fmt.SEGMENT_SEALED, flags=fmt.SEGMENT_UPLOADED,
                          indexed_bytes=result.size_bytes)
            self.applier.segments[segment.segment_id] = row
            self.index.kv.write([ix.segment_op(row)], sync=True)
        self.local.pop(segment.segment_id, None)
        segment.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)

    async def _seal_file(self, segment: ActiveSegment, retry_until: float | None
                         ) -> SealResult | None:
        """`seal_file`, retried with backoff while the disk is full (the footer needs
        room; a partly written one is cut off by the next try), until `retry_until`
        (a monotonic time) if given: then None. Other failures are raised."""
        delay = self.config.upload_retry_delay_s_min
        while True:
            try:
                return await self.sealer.seal(segment.path)
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                if retry_until is not None and time.monotonic() + delay > retry_until:
                    return None
                log.warning("sealing segment %x: disk full (retry in %.1fs): %s",
                            segment.segment_id, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.upload_retry_delay_s_max)

    async def _upload_with_retries(self, segment: ActiveSegment, name: str, size: int,
                                   retry_until: float | None) -> bool:
        """Upload until one succeeds (True) or `retry_until` passes (False). The delay
        between attempts doubles from upload_retry_delay_s_min to _max."""
        loop = asyncio.get_running_loop()
        delay = self.config.upload_retry_delay_s_min
        while True:
            try:
                await loop.run_in_executor(self.io_pool, self.upload, name, segment.path,
                                           size)
            except Exception as exc:  # noqa: BLE001 - any failure: keep local, retry
                self.upload_failures += 1
                if retry_until is not None and time.monotonic() + delay > retry_until:
                    log.error("upload of segment %x failed, giving up for now: %s",
                              segment.segment_id, exc)
                    return False
                log.warning("upload of segment %x failed (retry in %.1fs, %d bytes wait "
                            "for upload): %s", segment.segment_id, delay,
                            self.upload_backlog_bytes(), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.upload_retry_delay_s_max)
                continue
            self.uploads_done += 1
            return True

    def upload(self, name: str, path: str, size: int) -> None:
        """Store a sealed local segment in the backend and check its size there."""
        self.backend.put_file(name, path)
        stored = self.backend.size(name)
        if stored != size:
            raise InternalError(f"uploaded {name}: {stored} bytes, expected {size}")
