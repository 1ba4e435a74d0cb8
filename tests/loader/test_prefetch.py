"""The pre-read cache (petrel/prefetch.py) in front of a real petrel.Client and gateway.

The fetch function is the client's own `fetch_batch`, wrapped to record what it was asked
(and, in the fault tests only, to replace some results with errors)."""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import random
import threading
import time
from collections.abc import Sequence

import pytest
from conftest import Gateway, Objects, batch_gets, store_objects

from petrel.client import Client
from petrel.errors import InternalError
from petrel.prefetch import CacheClosed, FetchResult, PrefetchCache, PrefetchSettings

WAIT_S = 30.0


class Recorder:
    """client.fetch_batch, recording each call's keys; `faults` replaces the result of
    a key with an error, `failing` makes a call holding that key raise."""

    def __init__(self, client: Client, faults: dict[str, BaseException] | None = None,
                 failing: str | None = None) -> None:
        self.client = client
        self.calls: list[list[str]] = []
        self.faults = faults or {}
        self.failing = failing
        self.lock = threading.Lock()

    def __call__(self, keys: Sequence[str]) -> list[FetchResult]:
        with self.lock:
            self.calls.append(list(keys))
        if self.failing is not None and self.failing in keys:
            raise ConnectionError("injected: connection reset")
        results: list[FetchResult] = list(self.client.fetch_batch(keys))
        return [self.faults.get(key, result) for key, result in zip(keys, results, strict=True)]

    def counts(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(key for call in self.calls for key in call)


def digest(data: bytes | None) -> str:
    assert data is not None
    return hashlib.sha256(data).hexdigest()


def shuffled(urls: list[str], seed: int) -> list[str]:
    order = list(urls)
    random.Random(seed).shuffle(order)
    return order


def run_bounded(target, timeout_s: float = WAIT_S):  # type: ignore[no-untyped-def]
    """Run target() in a thread; fail (rather than hang) if it deadlocks."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:  # noqa: BLE001  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still running after {timeout_s}s: deadlock?"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def test_plan_reads_every_key_once_in_batches(client: Client, objects: Objects,
                                              gateway: Gateway) -> None:
    order = shuffled(objects.urls, 1)
    fetch = Recorder(client)
    before = batch_gets(gateway)
    settings = PrefetchSettings(batch_items=64, lookahead_batches_max=3)
    with PrefetchCache(fetch, settings) as cache:
        cache.plan(order)

        def read() -> list[str]:
            return [digest(cache.get(url)) for url in order]

        got = run_bounded(read)
        stats = cache.stats()
    assert got == [objects.digests[url] for url in order]
    assert set(fetch.counts().values()) == {1} and set(fetch.counts()) == set(order)
    # Every call was one whole batch of the plan (several fetch at once, so the calls
    # may start in any order).
    assert sorted(fetch.calls) == sorted(order[i:i + 64] for i in range(0, len(order), 64))
    assert batch_gets(gateway) - before == len(fetch.calls) == stats.fetch_calls == 10
    assert stats.keys_fetched == len(order)
    assert stats.bytes_fetched == sum(objects.sizes.values())
    assert stats.hits + stats.misses == len(order)
    assert stats.misses <= stats.fetch_calls  # a miss here: the reader fetched a batch


def test_one_thread_fetches_in_plan_order(client: Client, objects: Objects) -> None:
    order = shuffled(objects.urls, 3)
    fetch = Recorder(client)
    with PrefetchCache(fetch, PrefetchSettings(batch_items=50, fetch_threads=1)) as cache:
        cache.plan(order)
        assert [digest(d) for d in run_bounded(lambda: cache.get_many(order))] == \
            [objects.digests[url] for url in order]
    assert fetch.calls == [order[i:i + 50] for i in range(0, len(order), 50)]


def test_fetch_threads_are_in_flight_together(client: Client, objects: Objects) -> None:
    """`fetch_threads` calls run at once (each fetch here waits until three have
    started, or 5 s), never more, and the look-ahead counts those in flight."""
    started = threading.Semaphore(0)
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def fetch(keys: Sequence[str]) -> list[FetchResult]:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        started.release()
        deadline = time.monotonic() + 5.0
        while running[1] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            return list(client.fetch_batch(keys))
        finally:
            with lock:
                running[0] -= 1

    settings = PrefetchSettings(batch_items=20, fetch_threads=3, lookahead_batches_max=5)
    with PrefetchCache(fetch, settings) as cache:
        cache.plan(objects.urls)
        for _ in range(5):
            assert started.acquire(timeout=WAIT_S)
        time.sleep(0.3)  # time enough for a sixth fetch, were it allowed
        assert not started.acquire(timeout=0)
        assert running[1] == 3  # (once reads start, a reader may fetch a batch itself)
        got = run_bounded(lambda: [cache.get(url) for url in objects.urls])
    assert [digest(d) for d in got] == [objects.digests[url] for url in objects.urls]


def test_get_many_and_direct_fallback(client: Client, objects: Objects) -> None:
    order = objects.urls[:200]
    fetch = Recorder(client)
    with PrefetchCache(fetch, PrefetchSettings(batch_items=50)) as cache:
        cache.plan(order)
        for start in range(0, len(order), 50):
            chunk = order[start:start + 50]
            assert [digest(d) for d in cache.get_many(chunk)] == \
                [objects.digests[u] for u in chunk]
        # Outside the plan: one direct call for all of them; a missing object is None.
        outside = [objects.urls[300], f"s3://{objects.bucket}/no-such-key", objects.urls[301]]
        got = cache.get_many(outside)
        assert fetch.calls[-1] == outside
        assert got[1] is None
        assert digest(got[0]) == objects.digests[outside[0]]
        # A key read before (kept in the LRU) is a hit without a fetch.
        calls = len(fetch.calls)
        assert digest(cache.get(order[0])) == objects.digests[order[0]]
        assert len(fetch.calls) == calls
    assert set(fetch.counts()[u] for u in order) == {1}


def test_byte_bound_is_respected(client: Client, objects: Objects) -> None:
    bound = 20_000
    order = shuffled(objects.urls, 2)
    settings = PrefetchSettings(cache_bytes_max=bound, batch_items=8,
                                lookahead_bytes_max=bound)
    with PrefetchCache(Recorder(client), settings) as cache:
        cache.plan(order)
        peak = 0
        for url in order:
            assert digest(cache.get(url)) == objects.digests[url]
            stats = cache.stats()
            peak = max(peak, stats.cached_bytes)
            assert stats.cached_bytes <= bound
        assert cache.stats().evictions > 0
    assert peak > bound // 2  # the bound was reached, not trivially respected


@pytest.mark.parametrize("bound", [0, 1000, 5000])
def test_cache_smaller_than_one_batch_works(client: Client, objects: Objects,
                                            bound: int) -> None:
    order = shuffled(objects.urls, 3)[:300]
    settings = PrefetchSettings(cache_bytes_max=bound, batch_items=100,
                                lookahead_bytes_max=bound)
    with PrefetchCache(Recorder(client), settings) as cache:
        cache.plan(order)
        got = run_bounded(lambda: [digest(cache.get(url)) for url in order])
        assert got == [objects.digests[url] for url in order]
        stats = cache.stats()
        assert stats.cached_bytes <= bound
        assert stats.dropped > 0  # what did not fit was read again, not waited for


def test_error_is_raised_when_its_key_is_read(client: Client, objects: Objects) -> None:
    order = objects.urls[:120]
    bad = order[70]
    error = InternalError("injected item error", resource=bad)
    fetch = Recorder(client, faults={bad: error})
    with PrefetchCache(fetch, PrefetchSettings(batch_items=40)) as cache:
        cache.plan(order)
        for url in order[:70]:
            assert digest(cache.get(url)) == objects.digests[url]
        # Fetched ahead, not raised ahead: the batch holding it was asked for already.
        deadline = time.monotonic() + WAIT_S
        while bad not in fetch.counts() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bad in fetch.counts()
        with pytest.raises(InternalError) as raised:
            cache.get(bad)
        assert raised.value is error
        for url in order[71:]:
            assert digest(cache.get(url)) == objects.digests[url]
        assert cache.stats().errors == 1


def test_failed_fetch_call_errors_each_key_of_its_batch(client: Client,
                                                        objects: Objects) -> None:
    order = objects.urls[:90]
    fetch = Recorder(client, failing=order[45])  # the second batch of 30 fails whole
    with PrefetchCache(fetch, PrefetchSettings(batch_items=30)) as cache:
        cache.plan(order)
        for i, url in enumerate(order):
            if 30 <= i < 60:
                with pytest.raises(ConnectionError):
                    cache.get(url)
            else:
                assert digest(cache.get(url)) == objects.digests[url]
        # A later read of the same key (outside the plan now) fetches it again.
        with pytest.raises(ConnectionError):
            cache.get(order[45])
        fetch.failing = None
        assert digest(cache.get(order[45])) == objects.digests[order[45]]


def test_get_many_raises_first_error_after_reading_all(client: Client,
                                                       objects: Objects) -> None:
    order = objects.urls[:10]
    fetch = Recorder(client, faults={order[3]: InternalError("a"), order[6]: InternalError("b")})
    with PrefetchCache(fetch, PrefetchSettings(batch_items=10)) as cache:
        cache.plan(order)
        with pytest.raises(InternalError, match="a"):
            cache.get_many(order)
        assert cache.stats().hits + cache.stats().misses == 10


def test_lru_gives_hits_in_the_second_epoch(client: Client, objects: Objects) -> None:
    fetch = Recorder(client)
    with PrefetchCache(fetch, PrefetchSettings(batch_items=64)) as cache:
        for epoch in range(2):
            order = shuffled(objects.urls, 10 + epoch)
            cache.plan(order)
            for url in order:
                assert digest(cache.get(url)) == objects.digests[url]
        stats = cache.stats()
    assert stats.keys_fetched == len(objects.urls)  # the second epoch fetched nothing
    assert stats.hits >= 2 * len(objects.urls) - stats.fetch_calls


def test_lru_smaller_than_the_data_set_evicts_and_refetches(client: Client,
                                                            objects: Objects) -> None:
    half = sum(objects.sizes.values()) // 2
    fetch = Recorder(client)
    settings = PrefetchSettings(cache_bytes_max=half, batch_items=32, lookahead_bytes_max=half)
    with PrefetchCache(fetch, settings) as cache:
        for epoch in range(2):
            order = shuffled(objects.urls, 20 + epoch)
            cache.plan(order)
            for url in order:
                assert digest(cache.get(url)) == objects.digests[url]
        stats = cache.stats()
    assert stats.evictions > 0
    assert len(objects.urls) < stats.keys_fetched < 2 * len(objects.urls)


def test_lookahead_is_bounded_in_batches(client: Client, objects: Objects) -> None:
    fetch = Recorder(client)
    settings = PrefetchSettings(batch_items=20, lookahead_batches_max=3)
    with PrefetchCache(fetch, settings) as cache:
        cache.plan(objects.urls)
        deadline = time.monotonic() + WAIT_S
        while len(fetch.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # time enough for a fourth fetch, were it allowed
        assert len(fetch.calls) == 3
        for url in objects.urls[:20]:  # reading a batch makes room for one more
            cache.get(url)
        deadline = time.monotonic() + WAIT_S
        while len(fetch.calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(fetch.calls) == 4


def test_close_stops_the_thread(client: Client, objects: Objects) -> None:
    cache = PrefetchCache(Recorder(client), PrefetchSettings(batch_items=10,
                                                             lookahead_batches_max=2))
    cache.plan(objects.urls)
    cache.get(objects.urls[0])
    assert cache.thread_alive  # waiting for the reader to make room
    cache.close()
    assert not cache.thread_alive
    assert not [t for t in threading.enumerate() if t.name == "petrel-prefetch"]
    with pytest.raises(CacheClosed):
        cache.get(objects.urls[1])
    cache.close()  # idempotent


def test_thread_ends_when_the_plan_is_fetched(client: Client, objects: Objects) -> None:
    with PrefetchCache(Recorder(client), PrefetchSettings(batch_items=100)) as cache:
        cache.plan(objects.urls[:200])
        for url in objects.urls[:200]:
            cache.get(url)
        deadline = time.monotonic() + WAIT_S
        while cache.thread_alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cache.thread_alive


def _child_reads(cache: PrefetchCache, urls: list[str],
                 queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    stats_before = cache.stats()
    cache.plan(urls)
    digests = [digest(cache.get(url)) for url in urls]
    queue.put((stats_before.cached_items, digests, cache.thread_alive or True))
    cache.close()


def test_cache_made_before_fork_works_in_the_child(client: Client, objects: Objects) -> None:
    urls = objects.urls[:100]
    with PrefetchCache(client.fetch_batch, PrefetchSettings(batch_items=25)) as cache:
        cache.plan(urls)
        cache.get(urls[0])  # the parent's thread is running or done; its lock was used
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child_reads, args=(cache, urls, queue))
        child.start()
        cached_in_child, digests, _ = queue.get(timeout=WAIT_S)
        child.join(WAIT_S)
        assert child.exitcode == 0
        assert cached_in_child == 0  # the child started from nothing
        assert digests == [objects.digests[u] for u in urls]
        # The parent is unaffected.
        assert [digest(cache.get(u)) for u in urls[1:]] == [objects.digests[u] for u in urls[1:]]


def test_large_plan_with_duplicates(client: Client, bucket: str) -> None:
    stored = store_objects(client, bucket, 50, prefix="dup/")
    order = stored.urls * 3  # every key planned three times
    random.Random(5).shuffle(order)
    fetch = Recorder(client)
    with PrefetchCache(fetch, PrefetchSettings(batch_items=16)) as cache:
        cache.plan(order)
        assert [digest(cache.get(u)) for u in order] == [stored.digests[u] for u in order]
    assert set(fetch.counts().values()) == {1}
