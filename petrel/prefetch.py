"""The pre-read cache: fetch ahead of a reader whose future order of keys is known.

A training loop knows its order in advance (a sampler's index list, a manifest). The
cache takes that order as a *plan*, cut into batches, and background threads fetch the
batches ahead of the reader with one `fetch` call each (`petrel.Client.fetch_batch`
fits: one batch request per call), `fetch_threads` calls in flight at once, into memory
bounded in bytes. Objects stay after they
are read, in an LRU, so the next epoch finds them there.

    cache = PrefetchCache(client.fetch_batch, PrefetchSettings(cache_bytes_max=1 << 30))
    cache.plan(urls_in_epoch_order)
    for url in urls_in_epoch_order:
        data = cache.get(url)  # bytes, or None for a missing object
    print(cache.stats())
    cache.close()

Contracts:
- Memory: the bytes of cached objects never exceed `cache_bytes_max`. What does not fit
  when a batch arrives is dropped (counted in `dropped`) and read later with a direct
  fetch; so a cache smaller than one batch still works, it only fetches more.
- Look-ahead is bounded in batches and bytes: the threads wait for the reader once
  `lookahead_batches_max` batches are fetched or being fetched but not fully read, or
  their objects (those in flight estimated at the average size so far) hold
  `lookahead_bytes_max` bytes.
- No deadlock: a reader waits only for a fetch that is already in flight, which ends
  whatever the cache holds. A planned key whose batch is not fetched yet is fetched by
  the reader itself (the whole batch, once); a key that is not in the plan is fetched
  directly. A thread never waits for the reader while it holds a fetch result.
- Errors: a per-item error, or the error of a whole fetch call, is raised when (and
  each time) a read consumes that planned key, never earlier, never dropped.
- Fork: a cache used in a child process forgets its parent's state (contents, plan,
  threads and locks) and starts its own threads when given a plan there.
- Threads: they run only while the plan has batches to fetch; `close()` (or the context
  manager) stops them and waits for them, at most `close_timeout_s` in all.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

FetchResult = bytes | None | BaseException
# Fetches keys; returns one result per key, in order: the bytes, None for a missing
# object, or the error of that item. May raise: every key of the call gets that error.
FetchFn = Callable[[Sequence[str]], Sequence[FetchResult]]

MiB = 1024 * 1024
# The gateway takes at most 1000 items per batch request (Limits.batch_items_max).
BATCH_ITEMS_MAX = 1000


@dataclass(frozen=True, slots=True)
class PrefetchSettings:
    """Limits of one cache. `batch_items` cuts a plan given as a flat key list; plans
    given as batches keep their batches (cut at `BATCH_ITEMS_MAX`)."""

    cache_bytes_max: int = 512 * MiB
    batch_items: int = 256
    lookahead_batches_max: int = 8
    lookahead_bytes_max: int = 256 * MiB
    # Fetch calls in flight at once, each in its own thread: with one at a time the
    # gateway idles while the client decodes an answer, and a gateway with reader
    # processes answers several requests in parallel.
    fetch_threads: int = 4
    # How long close() waits for a fetch in flight before leaving the (daemon) thread.
    close_timeout_s: float = 30.0
    # A waiting reader re-checks at least this often (a guard, not a timeout).
    wait_poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.cache_bytes_max < 0:
            raise ValueError(f"cache_bytes_max={self.cache_bytes_max} < 0")
        if not 1 <= self.batch_items <= BATCH_ITEMS_MAX:
            raise ValueError(f"batch_items={self.batch_items} outside [1, {BATCH_ITEMS_MAX}]")
        if self.lookahead_batches_max < 1:
            raise ValueError(f"lookahead_batches_max={self.lookahead_batches_max} < 1")
        if self.lookahead_bytes_max < 0:
            raise ValueError(f"lookahead_bytes_max={self.lookahead_bytes_max} < 0")
        if self.fetch_threads < 1:
            raise ValueError(f"fetch_threads={self.fetch_threads} < 1")


@dataclass(frozen=True, slots=True)
class PrefetchStats:
    """Counters since the cache was created (or since fork, in a child).

    hits: reads answered from memory (possibly after waiting for a fetch in flight);
    misses: reads that had to fetch in the reader's thread (a batch of the plan not yet
    fetched, a dropped object, or a key outside the plan); waits: reads that waited for
    a fetch in flight; fetch_calls, keys_fetched, bytes_fetched: every call of `fetch`,
    from the thread and from readers; evictions: objects the LRU let go to make room;
    dropped: fetched objects that did not fit (read again later); errors: per-key errors
    stored for a planned read; cached_items, cached_bytes, pinned_bytes: now (pinned:
    fetched for a planned read not yet made)."""

    hits: int = 0
    misses: int = 0
    waits: int = 0
    fetch_calls: int = 0
    keys_fetched: int = 0
    bytes_fetched: int = 0
    evictions: int = 0
    dropped: int = 0
    errors: int = 0
    cached_items: int = 0
    cached_bytes: int = 0
    pinned_bytes: int = 0


class CacheClosed(RuntimeError):
    """The cache was closed."""


class _State(enum.Enum):
    PENDING = 0
    IN_FLIGHT = 1
    DONE = 2


@dataclass(slots=True, eq=False)
class _Batch:
    keys: list[str]
    generation: int
    state: _State = _State.PENDING
    # Planned reads of this batch's keys not yet made; 0 retires the batch.
    unread: int = 0


@dataclass(slots=True)
class _Entry:
    value: FetchResult
    size: int
    # Planned reads that will consume this entry; 0: it is in the LRU (bytes only).
    pins: int = 0


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    waits: int = 0
    fetch_calls: int = 0
    keys_fetched: int = 0
    bytes_fetched: int = 0
    evictions: int = 0
    dropped: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Plan:
    batches: list[_Batch] = field(default_factory=list)
    # key -> batches holding its planned reads not yet made, in plan order; a key
    # planned once (the common case) maps to the batch itself, to save memory.
    where: dict[str, _Batch | deque[_Batch]] = field(default_factory=dict)
    cursor: int = 0  # no batch before this index is PENDING
    ahead_batches: int = 0  # batches out of PENDING with reads left
    fetching_keys: int = 0  # keys of the batches the threads are fetching now


_UNSET = object()


class PrefetchCache:
    """See the module docstring. Thread-safe: several readers may share one cache."""

    def __init__(self, fetch: FetchFn, settings: PrefetchSettings | None = None) -> None:
        self._fetch = fetch
        self.settings = settings or PrefetchSettings()
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._pinned_bytes = 0
        self._plan = _Plan()
        self._generation = 0
        self._counters = _Counters()
        # Keys being fetched, and planned reads of them from other batches that started
        # while they were in flight (given to the entry when it arrives).
        self._in_flight: set[str] = set()
        self._deferred_pins: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _here(self) -> None:
        """In a forked child, forget the parent's state: its thread does not exist here,
        and its lock may have been copied while held."""
        if self._pid != os.getpid():
            self._reset_process_state()
        if self._closed:
            raise CacheClosed("the pre-read cache is closed")

    # ----- public API ----------------------------------------------------------------------
    def plan(self, keys: Iterable[str]) -> None:
        """Replace the plan with `keys`, in the order they will be read, cut into batches
        of `settings.batch_items`. Objects already cached stay (and are not fetched again)."""
        ordered = list(keys)
        size = self.settings.batch_items
        self.plan_batches(ordered[i:i + size] for i in range(0, len(ordered), size))

    def plan_batches(self, batches: Iterable[Sequence[str]]) -> None:
        """Replace the plan with these batches, each fetched with one call (batches over
        `BATCH_ITEMS_MAX` keys are cut). Reads planned before and not made are forgotten:
        their objects stay cached as LRU entries."""
        self._here()
        with self._cond:
            self._unpin_all()
            self._deferred_pins.clear()
            self._generation += 1
            plan = _Plan()
            for keys in batches:
                for start in range(0, len(keys), BATCH_ITEMS_MAX):
                    part = list(keys[start:start + BATCH_ITEMS_MAX])
                    if part:
                        self._add_batch(plan, part)
            self._plan = plan
            self._start_thread()
            self._cond.notify_all()

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if it is missing. Raises the error of its fetch."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The objects of `keys`, in order (None: missing). Every key is read (and
        consumed from the plan) before the first error, in `keys` order, is raised.
        Keys that need a direct fetch are fetched with one call."""
        self._here()
        results: list[object] = [_UNSET] * len(keys)
        claimers: set[int] = set()  # reads that made this thread fetch their batch
        while True:
            todo = [i for i, value in enumerate(results) if value is _UNSET]
            if not todo:
                break
            self._read_round(keys, todo, results, claimers)
        for value in results:
            if isinstance(value, BaseException):
                raise value
        return results  # type: ignore[return-value]  # only bytes and None are left

    def stats(self) -> PrefetchStats:
        if self._pid != os.getpid():
            self._reset_process_state()
        with self._cond:
            c = self._counters
            return PrefetchStats(
                hits=c.hits, misses=c.misses, waits=c.waits, fetch_calls=c.fetch_calls,
                keys_fetched=c.keys_fetched, bytes_fetched=c.bytes_fetched,
                evictions=c.evictions, dropped=c.dropped, errors=c.errors,
                cached_items=len(self._entries), cached_bytes=self._bytes,
                pinned_bytes=self._pinned_bytes)

    def close(self) -> None:
        """Stop the thread (waiting at most `close_timeout_s` for a fetch in flight) and
        drop every cached object. Idempotent; later reads raise CacheClosed."""
        if self._pid != os.getpid():
            self._reset_process_state()
        with self._cond:
            self._closed = True
            threads, self._threads = self._threads, []
            self._plan = _Plan()
            self._entries.clear()
            self._lru.clear()
            self._deferred_pins.clear()
            self._bytes = self._pinned_bytes = 0
            self._cond.notify_all()
        deadline = time.monotonic() + self.settings.close_timeout_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def thread_alive(self) -> bool:
        """Whether this process has a prefetch thread running (for tests and tools)."""
        threads = self._threads if self._pid == os.getpid() else []
        return any(thread.is_alive() for thread in threads)

    def __enter__(self) -> PrefetchCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ----- reading -------------------------------------------------------------------------
    def _read_round(self, keys: Sequence[str], todo: list[int], results: list[object],
                    claimers: set[int]) -> None:
        """One pass over the unread keys: answer what is in memory, claim batches of the
        plan not yet fetched, collect keys to fetch directly; wait only when nothing is
        left to do here but fetches in flight elsewhere."""
        claimed: list[_Batch] = []
        direct: list[int] = []
        round_claimers: list[int] = []
        with self._cond:
            waiting = False
            answered = 0
            counters = self._counters
            read_one = self._read_one
            for i in todo:
                outcome = read_one(keys[i], claimed)
                if outcome is _Wait:
                    waiting = True
                elif outcome is _Claimed:
                    claimers.add(i)
                    round_claimers.append(i)
                elif outcome is _Direct:
                    counters.misses += 1
                    direct.append(i)
                    answered += 1
                else:
                    results[i] = outcome
                    answered += 1
                    if i in claimers:
                        counters.misses += 1
                    else:
                        counters.hits += 1
            if answered:
                # Reads were consumed: pinned bytes and look-ahead may have dropped. One
                # wake-up for the round, not one per key (the thread may wait for room).
                self._cond.notify_all()
            if waiting and not claimed and not direct:
                self._counters.waits += 1
                self._cond.wait(self.settings.wait_poll_s)
                return
        fetched = [self._fetch_batch(batch) for batch in claimed]
        if claimed and not any(fetched):
            # The claimed batches were all in memory already (a later epoch): their
            # reads are hits, not misses.
            claimers.difference_update(round_claimers)
        if direct:
            self._fetch_direct(keys, direct, results)

    def _read_one(self, key: str, claimed: list[_Batch]) -> object:
        """Under the lock: the value for a read of `key`, or _Wait, _Claimed, _Direct."""
        batch = self._next_planned(key)
        if batch is None:
            entry = self._entries.get(key)
            if entry is None or not isinstance(entry.value, bytes):
                return _Direct
            if entry.pins == 0:
                self._lru.move_to_end(key)
            return entry.value
        if batch.state is _State.PENDING:
            batch.state = _State.IN_FLIGHT
            self._plan.ahead_batches += 1
            claimed.append(batch)
            return _Claimed
        if batch.state is _State.IN_FLIGHT:
            return _Claimed if batch in claimed else _Wait
        if key not in self._entries and key in self._in_flight:
            # Its batch is done but left the key to an earlier batch still fetching it
            # (the pins were deferred): wait for that fetch rather than fetch it again.
            return _Wait
        return self._consume(key, batch)

    def _consume(self, key: str, batch: _Batch) -> object:
        """A planned read of `key` from a fetched batch: take it off the plan, unpin."""
        self._pop_planned(key)
        batch.unread -= 1
        if batch.unread == 0:
            self._plan.ahead_batches -= 1  # the caller notifies
        entry = self._entries.get(key)
        if entry is None:  # dropped for lack of room, or evicted before it was pinned
            return _Direct
        if entry.pins:
            self._unpin(key, entry)
        else:  # its pin went to an earlier read of the same key
            self._lru.move_to_end(key)
        return entry.value

    def _fetch_direct(self, keys: Sequence[str], direct: list[int],
                      results: list[object]) -> None:
        wanted = [keys[i] for i in direct]
        fetched = self._call_fetch(wanted)
        with self._cond:
            for i, key, value in zip(direct, wanted, fetched, strict=True):
                results[i] = value
                if isinstance(value, bytes) and key not in self._entries:
                    self._insert(key, value, pins=0)

    # ----- the plan ------------------------------------------------------------------------
    def _add_batch(self, plan: _Plan, keys: list[str]) -> None:
        batch = _Batch(keys, self._generation, unread=len(keys))
        plan.batches.append(batch)
        for key in keys:
            found = plan.where.get(key)
            if found is None:
                plan.where[key] = batch
            elif isinstance(found, deque):
                found.append(batch)
            else:
                plan.where[key] = deque((found, batch))

    def _next_planned(self, key: str) -> _Batch | None:
        found = self._plan.where.get(key)
        if isinstance(found, deque):
            return found[0]
        return found

    def _pop_planned(self, key: str) -> None:
        found = self._plan.where[key]
        if isinstance(found, deque):
            found.popleft()
            if len(found) == 1:
                self._plan.where[key] = found[0]
        else:
            del self._plan.where[key]

    def _unpin_all(self) -> None:
        for key, entry in list(self._entries.items()):
            if entry.pins:
                entry.pins = 1
                self._unpin(key, entry)

    # ----- fetching ------------------------------------------------------------------------
    def _start_thread(self) -> None:
        """Under the lock: start threads up to `fetch_threads` for a plan with batches
        to fetch. A thread leaves the list (under the lock) before it ends."""
        if not any(batch.state is _State.PENDING for batch in self._plan.batches):
            return
        while len(self._threads) < self.settings.fetch_threads:
            thread = threading.Thread(target=self._run, name="petrel-prefetch", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self) -> None:
        """A prefetch thread: fetch the next batches while the look-ahead allows."""
        while True:
            with self._cond:
                batch = self._next_to_fetch()
                while batch is None:
                    if self._closed or not self._has_pending():
                        if threading.current_thread() in self._threads:
                            self._threads.remove(threading.current_thread())
                        return
                    self._cond.wait(self.settings.wait_poll_s)
                    batch = self._next_to_fetch()
                batch.state = _State.IN_FLIGHT
                self._plan.ahead_batches += 1
                plan = self._plan
                plan.fetching_keys += len(batch.keys)
            try:
                self._fetch_batch(batch)
            finally:
                with self._cond:
                    plan.fetching_keys -= len(batch.keys)

    def _has_pending(self) -> bool:
        plan = self._plan
        while plan.cursor < len(plan.batches) and \
                plan.batches[plan.cursor].state is not _State.PENDING:
            plan.cursor += 1
        return plan.cursor < len(plan.batches)

    def _next_to_fetch(self) -> _Batch | None:
        """The next PENDING batch of the plan, if the look-ahead bounds allow it."""
        if self._closed or not self._has_pending():
            return None
        settings = self.settings
        if self._plan.ahead_batches >= settings.lookahead_batches_max:
            return None
        plan = self._plan
        batch = plan.batches[plan.cursor]
        # With nothing pinned or in flight, one batch may always go.
        if self._pinned_bytes or plan.fetching_keys:
            ahead = self._pinned_bytes + self._average_size() * plan.fetching_keys
            estimate = self._average_size() * len(batch.keys)
            if ahead >= settings.lookahead_bytes_max or \
                    ahead + estimate > settings.cache_bytes_max:
                return None
        return batch

    def _average_size(self) -> int:
        c = self._counters
        return c.bytes_fetched // c.keys_fetched if c.keys_fetched else 0

    def _fetch_batch(self, batch: _Batch) -> bool:
        """Fetch the keys of an IN_FLIGHT batch that are not cached, store the results
        pinned for the batch's planned reads, and mark it DONE. False when every key
        was cached already (nothing fetched)."""
        with self._cond:
            wanted = [key for key in dict.fromkeys(batch.keys)
                      if key not in self._entries and key not in self._in_flight]
            self._in_flight.update(wanted)
        values: dict[str, FetchResult] = {}
        try:
            if wanted:
                values = dict(zip(wanted, self._call_fetch(wanted), strict=True))
        finally:
            # Even when interrupted (KeyboardInterrupt in a reader): a batch left
            # IN_FLIGHT would keep its readers waiting. Keys without a value are then
            # read directly.
            with self._cond:
                current = batch.generation == self._generation and not self._closed
                self._in_flight.difference_update(wanted)
                deferred = self._deferred_pins
                store = self._store
                for key, count in Counter(batch.keys).items():
                    pins = count if current else 0
                    if deferred and key in values:
                        pins += deferred.pop(key, 0)
                    store(key, values.get(key, _UNSET), pins)
                batch.state = _State.DONE
                self._cond.notify_all()
        return bool(wanted)

    def _store(self, key: str, value: object, pins: int) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            # Cached before this batch (or fetched meanwhile): pin it, keep its value.
            if pins:
                self._pin(key, entry, pins)
            return
        if value is _UNSET:
            if pins and key in self._in_flight:  # another batch brings it
                self._deferred_pins[key] = self._deferred_pins.get(key, 0) + pins
            return  # else it was cached when the batch started and evicted since
        if isinstance(value, BaseException) and pins:
            self._counters.errors += 1
        if pins or isinstance(value, bytes):
            self._insert(key, value, pins)  # type: ignore[arg-type]  # a FetchResult

    def _call_fetch(self, keys: list[str]) -> list[FetchResult]:
        """`fetch(keys)`, with a failure of the whole call given to every key."""
        results: list[FetchResult]
        try:
            results = list(self._fetch(keys))
            if len(results) != len(keys):
                raise RuntimeError(f"fetch returned {len(results)} results for {len(keys)} keys")
        except Exception as exc:  # noqa: BLE001  # stored per key, raised on its read
            results = [exc] * len(keys)
        fetched = sum(len(value) for value in results if isinstance(value, bytes))
        with self._cond:
            self._counters.fetch_calls += 1
            self._counters.keys_fetched += len(keys)
            self._counters.bytes_fetched += fetched
        return results

    # ----- memory --------------------------------------------------------------------------
    def _insert(self, key: str, value: FetchResult, pins: int) -> None:
        """Cache `key`, evicting LRU entries for room; drop it if it cannot fit."""
        size = len(value) if isinstance(value, bytes) else 0
        limit = self.settings.cache_bytes_max
        while self._bytes + size > limit and self._lru:
            evicted, _ = self._lru.popitem(last=False)
            self._bytes -= self._entries.pop(evicted).size
            self._counters.evictions += 1
        if self._bytes + size > limit:
            self._counters.dropped += 1
            return
        self._entries[key] = _Entry(value, size, pins)
        self._bytes += size
        if pins:
            self._pinned_bytes += size
        else:
            self._lru[key] = None
        assert self._bytes <= limit, (self._bytes, limit)

    def _pin(self, key: str, entry: _Entry, count: int) -> None:
        if entry.pins == 0:
            self._lru.pop(key, None)
            self._pinned_bytes += entry.size
        entry.pins += count

    def _unpin(self, key: str, entry: _Entry) -> None:
        """Drop one pin (the caller notifies waiters once it is done unpinning)."""
        entry.pins -= 1
        if entry.pins:
            return
        self._pinned_bytes -= entry.size
        if isinstance(entry.value, bytes):
            self._lru[key] = None
        else:  # misses and errors are answered once, not kept
            del self._entries[key]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_Wait = _Marker("_Wait")
_Claimed = _Marker("_Claimed")
_Direct = _Marker("_Direct")
