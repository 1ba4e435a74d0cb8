"""Workload pieces shared by the engine benchmarks: object keys, payloads, rates and
time budgets. Nothing here touches the engine."""

from __future__ import annotations

import gc
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

BUCKET = "train"
# Distinct payloads cycled through by the throughput stages: enough that no two
# neighbouring writes share bytes, few enough that N objects cost no N x size of RAM.
PAYLOAD_POOL_SIZE = 64
KEYS_PER_SHARD = 1000

T = TypeVar("T")


def object_key(i: int) -> str:
    """`shard-XXXX/img-XXXXXXXX.jpg`: 27 bytes, 1000 objects per shard (directory)."""
    return f"shard-{i // KEYS_PER_SHARD:04d}/img-{i:08d}.jpg"


def shard_names(count: int) -> list[str]:
    return [f"shard-{s:04d}" for s in range((count + KEYS_PER_SHARD - 1) // KEYS_PER_SHARD)]


def payload_pool(size_bytes: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size_bytes) for _ in range(PAYLOAD_POOL_SIZE)]


def window_payload(size: int, index: int, pool: bytes) -> bytes:
    """Object `index` of `size` bytes, distinct without generating GiBs of randomness:
    its index, then a window of `pool` (at least `size` + 8 bytes)."""
    start = (index * 7919) % (len(pool) - size)
    return index.to_bytes(8, "little") + pool[start + 8:start + size]


def shuffled(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def size_label(size_bytes: int) -> str:
    if size_bytes % (1024 * 1024) == 0:
        return f"{size_bytes // (1024 * 1024)} MiB"
    if size_bytes % 1024 == 0:
        return f"{size_bytes // 1024} KiB"
    return f"{size_bytes} B"


def parse_size(text: str) -> int:
    """'1k' / '10KiB' / '100k' / '4096' -> bytes."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1024, "m": 1024 * 1024}
    if value and value[-1] in units:
        return int(value[:-1]) * units[value[-1]]
    return int(value)


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `count_max` operations, and stop starting new ones after `seconds_max`
    (fsync-bound loops would otherwise dominate the run's wall time)."""

    count_max: int
    seconds_max: float

    def deadline(self, start: Start) -> float:
        return start.wall + self.seconds_max


@dataclass(frozen=True, slots=True)
class Rate:
    """One measurement: `ops` operations of `size_bytes` each in `seconds`."""

    name: str
    ops: int
    seconds: float
    size_bytes: int
    concurrency: int = 1
    note: str = ""
    round: int = 0  # which alternating round measured it (0: measured once)
    # CPU time of the whole process (all threads, user + system) during the measurement:
    # less sensitive than wall time to other tenants of a shared machine.
    cpu_seconds: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_seconds * 1e6 / self.ops if self.ops else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.ops_per_s * self.size_bytes / (1024 * 1024)


@dataclass(frozen=True, slots=True)
class Start:
    wall: float  # time.perf_counter()
    cpu: float  # time.process_time(): this process, all threads

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since the start."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def quiesce() -> Start:
    """Collect garbage left by the previous step, then start the clocks."""
    gc.collect()
    return Start(time.perf_counter(), time.process_time())


def capped_note(done: int, wanted: int, budget: Budget) -> str:
    if done >= wanted:
        return ""
    return f"time-capped at {budget.seconds_max:g} s: {done} of {wanted} objects"


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run `function(*args)` in a newly spawned interpreter and return its result, so a
    stage's RSS is its own and not what earlier stages left in this process's heap."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)
