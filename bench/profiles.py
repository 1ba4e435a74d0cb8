"""cProfile of the hot loops at 10 KiB: put (batch, c=64), get (single, random) and
get_objects(100), plus the replay done by open. Profiled runs are separate from the
timed ones (the profiler slows Python code several times, C code not at all), and the
commit thread's pwritev/fdatasync are not in the main thread's profile: the time the
event loop waits for them shows up as `select.epoll.poll`.
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import pstats
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import replay, throughput
from bench.workload import Budget, object_key, payload_pool, shuffled
from petrel.backends.local import LocalBackend
from petrel.recovery import open_state
from petrel.settings import Durability

SIZE_BYTES = 10 * 1024
TOP_LINES = 15


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ops: int
    seconds: float  # wall time under the profiler
    by_tottime: str
    by_cumtime: str


def _render(profiler: cProfile.Profile, sort: str) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(sort)
    stats.print_stats(TOP_LINES)
    text = stream.getvalue()
    # Keep the totals line and the table; drop pstats' blank and "Ordered by" lines.
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(line for line in lines if not line.lstrip().startswith("Ordered by"))


async def _profiled(name: str, ops: int, step: Callable[[], Awaitable[object]]) -> Profile:
    profiler = cProfile.Profile()
    # Frozen objects are skipped by the collector, so the step's own gc.collect() (see
    # workload.quiesce) costs little and does not crowd the top of the profile.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    profiler.enable()
    try:
        await step()
    finally:
        profiler.disable()
        gc.unfreeze()
    seconds = time.perf_counter() - started
    return Profile(
        name, ops, seconds, _render(profiler, "tottime"), _render(profiler, "cumulative")
    )


async def run(work_dir: str, count: int, replay_bytes: int) -> list[Profile]:
    keys = [object_key(i) for i in range(count)]
    pool = payload_pool(SIZE_BYTES, seed=3)
    order = shuffled(count, seed=5)
    store = await throughput.open_store(os.path.join(work_dir, "petrel"), Durability.BATCH)
    try:
        everything = Budget(count, float("inf"))
        profiles = [
            await _profiled(
                "put_object, 10 KiB, batch, c=64",
                count,
                lambda: throughput.put_concurrent(store, "put", keys, pool, everything),
            )
        ]
        await throughput.wait_for_seals(store)
        profiles.append(
            await _profiled(
                "get_object, 10 KiB, random",
                count,
                lambda: throughput.get_single(store, keys, order, SIZE_BYTES),
            )
        )
        profiles.append(
            await _profiled(
                "get_objects(100), 10 KiB, random",
                count,
                lambda: throughput.get_many(store, keys, order, SIZE_BYTES),
            )
        )
    finally:
        await store.close()
    shutil.rmtree(work_dir, ignore_errors=True)
    profiles.append(await _profile_replay(os.path.join(work_dir, "replay"), replay_bytes))
    shutil.rmtree(work_dir, ignore_errors=True)
    return profiles


async def _profile_replay(data_dir: str, tail_bytes: int) -> Profile:
    """`open_state` called directly, on this thread (Store.open runs it in a worker
    thread, where the profiler would not see it)."""
    records, written, _ = await replay.write_tail(data_dir, tail_bytes)
    replay.forget_tail(data_dir)
    backend = LocalBackend(os.path.join(data_dir, "blobs"))

    async def step() -> None:
        state = open_state(replay.config(data_dir), backend)
        state.kv.close()
        for segment in state.local.values():
            segment.close()

    try:
        return await _profiled(f"replay on open, {written / 2**20:.0f} MiB tail", records, step)
    finally:
        backend.close()
