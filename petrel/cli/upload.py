"""Storing many objects through the batch API, for `petrel pack` and `petrel cp -r`.

- `Batcher` cuts a stream of items into batches bounded in items and in bytes; an item
  over the byte bound alone goes by plain PUT (`Batch.single`), which also keeps it
  under the gateway's per-batch limit (docs/wire.md).
- `Pipeline` keeps at most `jobs` batches in flight on threads; the caller reads the
  data and handles every result in its own thread, so memory is bounded by
  `jobs * batch_bytes_max` plus the batch being filled.
- `store_batch` reports a result per item. `Client.put_batch` raises the first error
  and says nothing of the other items, so after a failure each item is checked with a
  HEAD (size and ETag = MD5 of the content): what did get stored counts as stored, and
  is never sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from petrel.cli.remote import Remote, RemoteUrl, describe_error

BATCH_ITEMS_DEFAULT = 256
BATCH_ITEMS_MAX = 1000  # the gateway's Limits.batch_items_max default
BATCH_BYTES_DEFAULT = 64 * 1024 * 1024
BATCH_BYTES_MAX = 256 * 1024 * 1024  # the gateway's Limits.batch_bytes_max default
JOBS_DEFAULT = 4
JOBS_MAX = 64

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item:
    where: RemoteUrl
    data: bytes
    md5: str  # hex MD5 of data: the ETag a single-part store answers


@dataclass(slots=True)
class Batch:
    number: int
    items: list[Item] = field(default_factory=list)
    size_bytes: int = 0
    # One item over the byte bound, sent with a plain PUT.
    single: bool = False


class Batcher:
    """Cuts items into batches of at most `items_max` items and `bytes_max` bytes."""

    def __init__(self, items_max: int, bytes_max: int) -> None:
        if not 1 <= items_max <= BATCH_ITEMS_MAX:
            raise ValueError(f"batch items {items_max} outside [1, {BATCH_ITEMS_MAX}]")
        if not 1 <= bytes_max <= BATCH_BYTES_MAX:
            raise ValueError(f"batch bytes {bytes_max} outside [1, {BATCH_BYTES_MAX}]")
        self.items_max = items_max
        self.bytes_max = bytes_max
        self._count = 0
        self._open = self._new()

    def _new(self, single: bool = False) -> Batch:
        self._count += 1
        return Batch(self._count, single=single)

    def add(self, item: Item) -> Iterator[Batch]:
        """The batches that are full once `item` is taken (zero, one or two)."""
        size = len(item.data)
        if size > self.bytes_max:
            single = self._new(single=True)
            single.items.append(item)
            single.size_bytes = size
            yield single
            return
        current = self._open
        if current.items and (len(current.items) >= self.items_max
                              or current.size_bytes + size > self.bytes_max):
            yield current
            current = self._open = self._new()
        current.items.append(item)
        current.size_bytes += size

    def flush(self) -> Iterator[Batch]:
        """The last, partly filled batch, if any."""
        if self._open.items:
            full, self._open = self._open, self._new()
            yield full


def store_batch(remote: Remote, batch: Batch) -> list[str | None]:
    """Store a batch; per item None (stored, ETag checked) or why it was not."""
    try:
        if batch.single:
            item = batch.items[0]
            _, info = remote.client.put_with_info(str(item.where), item.data)
            etags = [info.get("etag", "")]
        else:
            etags = remote.client.put_batch([(str(item.where), item.data)
                                             for item in batch.items])
    except Exception as exc:  # noqa: BLE001 - any failure: find out item by item
        return [_check_stored(remote, item, exc) for item in batch.items]
    return [None if etag == item.md5 else
            f"stored with ETag {etag!r}, expected the MD5 {item.md5}"
            for item, etag in zip(batch.items, etags, strict=True)]


def _check_stored(remote: Remote, item: Item, failure: Exception) -> str | None:
    try:
        if is_stored(remote, item.where, len(item.data), item.md5):
            return None
    except Exception:  # noqa: BLE001 - the first failure is the one worth reporting
        pass
    return describe_error(failure)


def is_stored(remote: Remote, where: RemoteUrl, size: int, md5: str) -> bool:
    """Whether `where` holds an object of `size` bytes whose ETag is `md5`."""
    from petrel.errors import NoSuchBucket, NoSuchKey

    try:
        info = remote.head(where)
    except (NoSuchKey, NoSuchBucket):
        return False
    return info.size == size and info.etag == md5


class Pipeline(Generic[T]):
    """At most `jobs` tasks in flight; results come back to the submitting thread."""

    def __init__(self, jobs: int) -> None:
        if not 1 <= jobs <= JOBS_MAX:
            raise ValueError(f"jobs {jobs} outside [1, {JOBS_MAX}]")
        self.jobs = jobs
        self._pool = ThreadPoolExecutor(jobs, "petrel-upload")
        self._running: dict[Future[T], Batch] = {}

    def start(self, batch: Batch, call: Callable[[], T]) -> list[tuple[Batch, T]]:
        """Start `call()` for `batch` once a slot is free; returns the batches that
        finished while waiting for one, with their results."""
        finished: list[tuple[Batch, T]] = []
        while len(self._running) >= self.jobs:
            finished += self._finished()
        self._running[self._pool.submit(call)] = batch
        return finished

    def _finished(self) -> list[tuple[Batch, T]]:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        return [(self._running.pop(future), future.result()) for future in done]

    def drain(self) -> Iterator[tuple[Batch, T]]:
        """Every batch still in flight, as each finishes."""
        while self._running:
            yield from self._finished()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
