"""Batch reads: one multi-get in the index, then the records read sorted by segment and
offset, with neighbours merged into one read (one pread locally, one ranged GET on a
remote backend). Results come back in request order, missing keys included.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

from petrel import format as fmt
from petrel import index as ix
from petrel import wire
from petrel.errors import InvalidArgument, NoSuchKey, NotServedHere, PetrelError
from petrel.model import ByteRange, GetItem, GetResult, resolve_range
from petrel.segments import LocalFile

if TYPE_CHECKING:
    from petrel.replica import Replica
    from petrel.store import Store


class _Want(NamedTuple):
    """One record to read: for the item at `position` of the batch. A NamedTuple, not a
    dataclass: one is built per object read, and a tuple is cheaper to construct."""

    position: int
    entry: fmt.Entry
    full_key: bytes


@dataclass(slots=True)
class Run:
    """Records of one segment that one read covers: bytes [start, end)."""

    segment_id: int
    start: int
    end: int
    wants: list[_Want]


_BY_LOCATION = attrgetter("entry.location")  # (segment id, offset, ...): read order


def plan_runs(wants: list[_Want], gap_bytes: int, run_bytes_max: int) -> list[Run]:
    """Sort reads by segment and offset, merge neighbours closer than `gap_bytes` into
    runs of at most `run_bytes_max` (a single larger record is its own run). Runs come
    in (segment id, offset) order."""
    runs: list[Run] = []
    run: Run | None = None
    for want in sorted(wants, key=_BY_LOCATION):
        segment_id, start, length, _ = want.entry.location
        end = start + length
        if run is not None and segment_id == run.segment_id and start - run.end <= gap_bytes \
                and max(end, run.end) - run.start <= run_bytes_max:
            run.end = max(run.end, end)
            run.wants.append(want)
            continue
        run = Run(segment_id, start, end, [want])
        runs.append(run)
    return runs


@dataclass(slots=True)
class Lookup:
    """A batch after its index lookup, before any record is read: the records to read
    (`wants`), the large objects (`large`, positions), and the results known already
    (missing keys and buckets, bad keys) in request order."""

    requested: list[GetItem]
    results: list[GetResult | None]
    wants: list[_Want]
    large: list[int]


def look_up(store: Store | Replica, items: Sequence[GetItem]) -> Lookup:
    """One index multi-get for the whole batch."""
    requested = list(items)
    results: list[GetResult | None] = [None] * len(requested)
    positions, keys, full_keys = _index_keys(store, requested, results)
    values = store.kv.multi_get(keys)
    wants: list[_Want] = []
    large: list[int] = []
    decode = fmt.decode_index_value
    for position, full_key, value in zip(positions, full_keys, values, strict=True):
        if value is None:
            item = requested[position]
            error = NoSuchKey(resource=f"{item.bucket}/{item.key}")
            results[position] = GetResult(item, None, error)
            continue
        entry = decode(value)
        if entry.flags & fmt.FLAG_LARGE:
            large.append(position)
            continue
        wants.append(_Want(position, entry, full_key))
    return Lookup(requested, results, wants, large)


# The most record bytes of a batch answered whole by the gateway's fast lane (held in
# memory, sent in one writev); the full stack streams longer answers.
WHOLE_ANSWER_BYTES_MAX = 16 * 1024 * 1024


def look_up_whole(store: Store | Replica, items: Sequence[GetItem]) -> Lookup:
    """`look_up` for an answer to be held whole: raises NotServedHere for a batch
    holding a large object (streamed from the backend) or records adding up to more
    than WHOLE_ANSWER_BYTES_MAX."""
    lookup = look_up(store, items)
    if lookup.large:
        raise NotServedHere("a batch with a large object")
    total = 0
    for want in lookup.wants:
        total += want.entry.location.length
    if total > WHOLE_ANSWER_BYTES_MAX:
        raise NotServedHere("a batch answer to stream")
    return lookup


# ----- short-circuit reads ---------------------------------------------------------
def locate(store: Store, bucket: str, items: Sequence[tuple[str, tuple[int, int | None] | None]]
           ) -> tuple[list[wire.SegmentFile], list[wire.LocateEntry]]:
    """Where each item's record lies in a local segment file, for a client on this
    machine that reads it itself (petrel.shortcircuit): (the segment files named, one
    LOCATIONS entry per (key, byte range) item, in order). An item no local file holds
    (a remote segment, a large object) or that fails (an invalid key, a range past the
    end) is FETCH: the client reads it with a batch get, which answers its bytes or its
    error. One index multi-get and one stat per segment; no record is read, and no
    object is made per key beyond its entry (this runs for every object a client on
    this machine reads). The primary's: readers hand batch locates over. Raises
    NoSuchBucket."""
    row = store._bucket(bucket)
    prefix = ix.object_prefix(row.bucket_id)
    key_bytes_max = store.limits.key_bytes_max
    fetch = (0, 0, 0, 0, 0, 0, wire.Where.FETCH)
    not_found = (0, 0, 0, 0, 0, 0, wire.Where.NOT_FOUND)
    located = wire.Where.LOCATED
    entries: list[wire.LocateEntry] = [fetch] * len(items)
    positions: list[int] = []
    keys: list[bytes] = []
    for position, (key, _) in enumerate(items):
        raw_key = key.encode()
        if raw_key and len(raw_key) <= key_bytes_max:  # else FETCH: the batch get says why
            positions.append(position)
            keys.append(prefix + raw_key)
    files: dict[int, LocalFile | None] = {}
    decode, large = fmt.decode_index_location, fmt.FLAG_LARGE
    for position, value in zip(positions, store.kv.multi_get(keys), strict=True):
        if value is None:
            entries[position] = not_found
            continue
        segment_id, flags, offset, length, size, checksum = decode(value)
        if flags & large:
            continue
        local = files.get(segment_id, False)
        if local is False:
            local = files[segment_id] = store.local_file(segment_id)
        if local is None:
            continue
        byte_range = items[position][1]
        if byte_range is None:
            start, count = 0, size
        else:
            try:
                start, count = resolve_range(ByteRange(*byte_range), size)
            except PetrelError:
                continue
        entries[position] = (segment_id, offset, length, checksum, start, count, located)
    return [wire.SegmentFile(segment_id, local.path, local.device, local.inode)
            for segment_id, local in files.items() if local is not None], entries


async def read_batch(store: Store | Replica, items: Sequence[GetItem],
                     lookup: Lookup | None = None) -> list[GetResult]:
    """Results in request order; `lookup` when `look_up` was already called."""
    if lookup is None:
        lookup = look_up(store, items)
    requested, results, wants, large = lookup.requested, lookup.results, lookup.wants, \
        lookup.large
    runs = plan_runs(wants, store.config.read_merge_gap_bytes,
                     store.config.read_merge_bytes_max)
    remote: list[Run] = []
    for run in runs:
        local = store._read_local(fmt.Location(run.segment_id, run.start,
                                               run.end - run.start, 0))
        if local is None:
            remote.append(run)
        else:
            _finish_run(store, requested, results, run, local[0], local[1])
    if remote:
        await _read_remote(store, requested, results, remote)
    for position in large:
        item = requested[position]
        try:
            got = await store.get_object(item.bucket, item.key, item.byte_range)
            results[position] = GetResult(item, got.body, None, got._entry)
        except PetrelError as exc:
            results[position] = GetResult(item, None, exc)
    done = [r for r in results if r is not None]
    assert len(done) == len(requested)
    return done


def _index_keys(store: Store | Replica, requested: list[GetItem], results: list[GetResult | None]
                ) -> tuple[list[int], list[bytes], list[bytes]]:
    """(positions, index keys, b"bucket/key" record keys) of the items that name an
    existing bucket and a valid key; the others get their error in `results`."""
    positions: list[int] = []
    keys: list[bytes] = []
    full_keys: list[bytes] = []
    # Per bucket named: (index key prefix, record key prefix); a batch names one or few.
    prefixes: dict[str, tuple[bytes, bytes]] = {}
    buckets = store.applier.buckets
    key_bytes_max = store.limits.key_bytes_max
    for position, item in enumerate(requested):
        raw_key = item.key.encode()
        prefix = prefixes.get(item.bucket)
        if prefix is None:
            row = buckets.get(item.bucket)
            if row is not None:
                prefix = prefixes[item.bucket] = (ix.object_prefix(row.bucket_id),
                                                  item.bucket.encode() + b"/")
        if prefix is None or not raw_key or len(raw_key) > key_bytes_max:
            try:
                store._bucket(item.bucket)
                store._key(item.key)
            except PetrelError as exc:
                results[position] = GetResult(item, None, exc)
                continue
        assert prefix is not None
        positions.append(position)
        keys.append(prefix[0] + raw_key)  # ix.object_key(bucket id, raw_key)
        full_keys.append(prefix[1] + raw_key)
    return positions, keys, full_keys


async def _read_remote(store: Store | Replica, requested: list[GetItem],
                       results: list[GetResult | None], remote: list[Run]) -> None:
    """One ranged GET per run, the runs spread over the I/O pool's threads: each thread
    takes its share in one hand-off (a hand-off per run costs more than a cached read)."""
    loop = asyncio.get_running_loop()
    lanes = max(1, min(len(remote), store.config.io_threads))
    shares = [remote[lane::lanes] for lane in range(lanes)]
    fetched_shares = await asyncio.gather(*(
        loop.run_in_executor(store.io_pool, _get_runs, store, share) for share in shares))
    datas: list[bytes | BaseException] = [b""] * len(remote)
    for lane, fetched_share in enumerate(fetched_shares):
        datas[lane::lanes] = fetched_share
    for run, fetched in zip(remote, datas, strict=True):
        if isinstance(fetched, InvalidArgument):
            # The run reaches past the end of its segment (a segment cut short): read
            # its records one by one, so those still whole are served and those cut
            # off are reported (and counted) as corruption.
            await _read_each(store, requested, results, run)
        elif isinstance(fetched, NotServedHere):
            raise fetched  # a reader process: the primary answers the whole batch
        elif isinstance(fetched, BaseException):
            failure = fetched if isinstance(fetched, PetrelError) \
                else PetrelError(str(fetched))
            for want in run.wants:
                results[want.position] = GetResult(requested[want.position], None, failure)
        else:
            _finish_run(store, requested, results, run, fetched, 0)


def _get_runs(store: Store | Replica, runs: list[Run]) -> list[bytes | BaseException]:
    """In a worker thread: each run's bytes, or the exception reading it raised."""
    out: list[bytes | BaseException] = []
    for run in runs:
        try:
            out.append(store.backend.get_range(fmt.segment_blob_name(run.segment_id),
                                               run.start, run.end - run.start))
        except Exception as exc:  # noqa: BLE001 - returned in the run's place
            out.append(exc)
    return out


async def _read_each(store: Store | Replica, requested: list[GetItem],
                     results: list[GetResult | None], run: Run) -> None:
    for want in run.wants:
        item = requested[want.position]
        try:
            payload = await store._read_payload(want.entry, want.full_key)
        except PetrelError as exc:
            results[want.position] = GetResult(item, None, exc)
            continue
        _finish(item, results, want.position, want.entry, payload)


def _finish_run(store: Store | Replica, requested: list[GetItem], results: list[GetResult | None],
                run: Run, data: bytes | bytearray | mmap.mmap, base: int) -> None:
    """Verify and slice the run's records; `base` is where the run starts in `data`."""
    check = store._check_payload
    shift = base - run.start
    for position, entry, full_key in run.wants:
        item = requested[position]
        location = entry.location
        try:
            payload = check(data, location.offset + shift, location, full_key)
        except PetrelError as exc:
            results[position] = GetResult(item, None, exc)
            continue
        _finish(item, results, position, entry, payload)


def _finish(item: GetItem, results: list[GetResult | None], position: int,
            entry: fmt.Entry, payload: bytes) -> None:
    """Set the item's result from its verified `payload`."""
    body = payload
    try:
        if item.byte_range is not None:
            start, length = resolve_range(item.byte_range, entry.size)
            body = payload[start : start + length]
    except PetrelError as exc:
        results[position] = GetResult(item, None, exc)
        return
    results[position] = GetResult(item, body, None, entry)
