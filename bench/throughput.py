"""Throughput per object size: petrel puts and gets, and the filesystem peer, measured
in the same run on the same objects.

Per size:
1. petrel `batch` puts (concurrency 64) fill a store with N objects, and the peer
   writes the same N objects as files (no fsync); both are measured once;
2. `repeats` read rounds over fresh random orders, alternating which side goes first;
3. petrel `none` puts of N objects into a fresh store (once);
4. `repeats` durable-write rounds, each a short time-boxed run of every durable write
   mode (petrel batch, always, put_objects; file + fsync with 64 threads and 1) into a
   fresh store or directory, in a rotating order. The machine is shared: alternating
   short rounds and taking medians keeps one slow moment from deciding a ratio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import peer
from bench.workload import (
    BUCKET,
    Budget,
    Rate,
    capped_note,
    object_key,
    payload_pool,
    quiesce,
    shuffled,
)
from petrel.errors import PetrelError
from petrel.model import GetItem, PutItem
from petrel.settings import Durability, StoreConfig
from petrel.store import Store

CONCURRENCY = 64
GET_BATCH_ITEMS = 100
PUT_BATCH_ITEMS = 100
_SEAL_WAIT_S = 120.0

PUT_FILL = "petrel put_object, batch, c=64, all N"
FILE_WRITE = "file write, no fsync, 1 thread, all N"
PUT_NONE = "petrel put_object, none, c=64, all N"
PUT_BATCH = "petrel put_object, batch, c=64"
PUT_ALWAYS = "petrel put_object, always, c=64"
PUT_MANY = "petrel put_objects(100), batch, 1 task"
FILE_FSYNC_64 = "file write + fsync, 64 threads"
FILE_FSYNC_1 = "file write + fsync, 1 thread"
GET = "petrel get_object, random"
GET_MANY = "petrel get_objects(100), random"
FILE_READ = peer.READ
FILE_READ_IDIOM = peer.READ_IDIOM
WRITES = (PUT_FILL, FILE_WRITE, PUT_NONE)
DURABLE_WRITES = (PUT_BATCH, FILE_FSYNC_64, PUT_ALWAYS, FILE_FSYNC_1, PUT_MANY)
READS = (GET, GET_MANY, FILE_READ, FILE_READ_IDIOM)
MEASURES = WRITES + DURABLE_WRITES + READS


@dataclass(frozen=True, slots=True)
class SizePlan:
    size_bytes: int
    count: int
    # Each durable-write measurement in each round stops after this long.
    round_budget: Budget
    repeats: int
    seed: int = 1


@dataclass(slots=True)
class SizeResult:
    size_bytes: int
    count: int
    rates: list[Rate] = field(default_factory=list)

    def of(self, name: str) -> list[Rate]:
        return [r for r in self.rates if r.name == name]

    def median(self, name: str) -> float:
        """Median objects/s of measure `name` over its rounds (or its one measurement)."""
        return statistics.median(r.ops_per_s for r in self.of(name))

    def cpu_median(self, name: str) -> float:
        """Median process CPU microseconds per object of measure `name`."""
        return statistics.median(r.cpu_us_per_op for r in self.of(name))


# ----- petrel --------------------------------------------------------------------------
async def open_store(data_dir: str, durability: Durability) -> Store:
    shutil.rmtree(data_dir, ignore_errors=True)
    store = await Store.open(StoreConfig(data_dir, durability=durability))
    await store.create_bucket(BUCKET)
    return store


async def put_concurrent(
    store: Store, name: str, keys: Sequence[str], pool: Sequence[bytes], budget: Budget
) -> Rate:
    """`put_object` from CONCURRENCY tasks pulling from one queue of keys."""
    wanted = min(len(keys), budget.count_max)
    shared = iter(range(wanted))
    done = 0
    start = quiesce()
    deadline = budget.deadline(start)

    async def worker() -> None:
        nonlocal done
        for i in shared:
            await store.put_object(BUCKET, keys[i], pool[i % len(pool)])
            done += 1
            if time.perf_counter() > deadline:
                return

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    seconds, cpu = start.elapsed()
    return Rate(
        name,
        done,
        seconds,
        len(pool[0]),
        CONCURRENCY,
        capped_note(done, wanted, budget),
        cpu_seconds=cpu,
    )


async def put_batches(
    store: Store, keys: Sequence[str], pool: Sequence[bytes], budget: Budget
) -> Rate:
    """`put_objects` in batches of PUT_BATCH_ITEMS, one batch in flight."""
    wanted = min(len(keys), budget.count_max)
    batches = [
        [
            PutItem(BUCKET, keys[i], pool[i % len(pool)])
            for i in range(first, min(first + PUT_BATCH_ITEMS, wanted))
        ]
        for first in range(0, wanted, PUT_BATCH_ITEMS)
    ]
    done = 0
    start = quiesce()
    deadline = budget.deadline(start)
    for batch in batches:
        results = await store.put_objects(batch)
        failed = [r for r in results if isinstance(r, PetrelError)]
        if failed:
            raise failed[0]
        done += len(batch)
        if time.perf_counter() > deadline:
            break
    seconds, cpu = start.elapsed()
    return Rate(
        PUT_MANY, done, seconds, len(pool[0]), 1, capped_note(done, wanted, budget), cpu_seconds=cpu
    )


async def get_single(
    store: Store, keys: Sequence[str], order: Sequence[int], size_bytes: int
) -> Rate:
    bad = 0
    start = quiesce()
    for i in order:
        got = await store.get_object(BUCKET, keys[i])
        bad += len(got.body) != size_bytes
    seconds, cpu = start.elapsed()
    if bad:
        raise AssertionError(f"{bad} wrong-sized petrel gets")
    return Rate(GET, len(order), seconds, size_bytes, cpu_seconds=cpu)


async def get_many(
    store: Store, keys: Sequence[str], order: Sequence[int], size_bytes: int
) -> Rate:
    batches = [
        [GetItem(BUCKET, keys[i]) for i in order[first : first + GET_BATCH_ITEMS]]
        for first in range(0, len(order), GET_BATCH_ITEMS)
    ]
    bad = 0
    start = quiesce()
    for batch in batches:
        for result in await store.get_objects(batch):
            bad += result.data is None or len(result.data) != size_bytes
    seconds, cpu = start.elapsed()
    if bad:
        raise AssertionError(f"{bad} failed or wrong-sized petrel batch gets")
    return Rate(GET_MANY, len(order), seconds, size_bytes, cpu_seconds=cpu)


async def wait_for_seals(store: Store) -> None:
    """Let segments rolled during the puts finish sealing (a background re-read and
    upload), so the read rounds are not measured against it."""
    give_up = time.monotonic() + _SEAL_WAIT_S
    while time.monotonic() < give_up:
        stats = store.stats()
        if stats.sealed_segments >= stats.segments - 1:
            return
        await asyncio.sleep(0.05)


# ----- one size ------------------------------------------------------------------------
async def run_size(plan: SizePlan, work_dir: str) -> SizeResult:
    keys = [object_key(i) for i in range(plan.count)]
    pool = payload_pool(plan.size_bytes, plan.seed)
    result = SizeResult(plan.size_bytes, plan.count)
    everything = Budget(plan.count, float("inf"))
    store = await open_store(os.path.join(work_dir, "petrel-fill"), Durability.BATCH)
    try:
        result.rates.append(await put_concurrent(store, PUT_FILL, keys, pool, everything))
        await wait_for_seals(store)
        files = peer.prepare_tree(os.path.join(work_dir, "files"), plan.count, keys)
        result.rates.append(
            peer.write_files(FILE_WRITE, files, pool, fsync=False, threads=1, budget=everything)
        )
        for number in range(1, plan.repeats + 1):
            order = shuffled(plan.count, plan.seed + number)
            rates = await _read_round(
                store, keys, files, order, plan.size_bytes, peer_first=number % 2 == 0
            )
            result.rates.extend(dataclasses.replace(r, round=number) for r in rates)
    finally:
        await store.close()
    shutil.rmtree(work_dir, ignore_errors=True)
    result.rates.append(await _fresh_put(work_dir, PUT_NONE, keys, pool, everything))
    for number in range(1, plan.repeats + 1):
        rates = await _durable_round(plan, keys, pool, work_dir, number)
        result.rates.extend(dataclasses.replace(r, round=number) for r in rates)
    return result


async def _read_round(
    store: Store,
    keys: Sequence[str],
    files: Sequence[str],
    order: Sequence[int],
    size_bytes: int,
    *,
    peer_first: bool,
) -> list[Rate]:
    if peer_first:
        theirs = [
            peer.read_files(files, order, size_bytes),
            peer.read_files_idiom(files, order, size_bytes),
        ]
    ours = [
        await get_single(store, keys, order, size_bytes),
        await get_many(store, keys, order, size_bytes),
    ]
    if not peer_first:
        theirs = [
            peer.read_files(files, order, size_bytes),
            peer.read_files_idiom(files, order, size_bytes),
        ]
    return ours + theirs


async def _durable_round(
    plan: SizePlan, keys: Sequence[str], pool: Sequence[bytes], work_dir: str, number: int
) -> list[Rate]:
    shift = number % len(DURABLE_WRITES)
    rates = []
    for name in DURABLE_WRITES[shift:] + DURABLE_WRITES[:shift]:
        if name in (FILE_FSYNC_64, FILE_FSYNC_1):
            threads = CONCURRENCY if name == FILE_FSYNC_64 else 1
            rates.append(_fresh_files(work_dir, name, threads, plan, keys, pool))
        else:
            rates.append(await _fresh_put(work_dir, name, keys, pool, plan.round_budget))
    return rates


_DURABILITY = {
    PUT_NONE: Durability.NONE,
    PUT_BATCH: Durability.BATCH,
    PUT_ALWAYS: Durability.ALWAYS,
    PUT_MANY: Durability.BATCH,
}


async def _fresh_put(
    work_dir: str, name: str, keys: Sequence[str], pool: Sequence[bytes], budget: Budget
) -> Rate:
    store = await open_store(os.path.join(work_dir, "petrel"), _DURABILITY[name])
    try:
        if name == PUT_MANY:
            return await put_batches(store, keys, pool, budget)
        return await put_concurrent(store, name, keys, pool, budget)
    finally:
        await store.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def _fresh_files(
    work_dir: str,
    name: str,
    threads: int,
    plan: SizePlan,
    keys: Sequence[str],
    pool: Sequence[bytes],
) -> Rate:
    files = peer.prepare_tree(os.path.join(work_dir, "files"), plan.count, keys)
    try:
        return peer.write_files(
            name, files, pool, fsync=True, threads=threads, budget=plan.round_budget
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
