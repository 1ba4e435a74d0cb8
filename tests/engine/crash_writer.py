"""The writer half of the crash test (tests/engine/test_crash.py), run as a subprocess
that the test kills with SIGKILL at a random moment.

    python crash_writer.py DATA_DIR ACK_LOG ROUND DURABILITY SEED

It opens the store, makes sure the buckets exist, prints ``ready`` and then runs
`WORKERS` concurrent tasks of puts (small, medium and larger than the pack threshold,
single and batched), overwrites and deletes until it is killed (or `RUN_S_MAX` passes,
so an orphaned writer cannot run forever).

Each task owns its keys, so operations on one key never overlap and their order is the
order in the log. Around every operation the writer appends to ACK_LOG, one line per key:

    I <op> <bucket> <key> <version>    before the call (an intent)
    A <op> <bucket> <key> <version>    after the call returned (an acknowledgement)

`op` is ``P`` (put) or ``D`` (delete). Each line is one `os.write` on an O_APPEND fd, so
a killed writer leaves whole lines (a torn last line is ignored by the reader). An object
body is a pure function of (bucket, key, version) (`body_for`) and carries its version in
its user metadata, so the checker can verify any object it finds byte for byte.

The test imports this module for `LIMITS`, `body_for`, `parse_log` and the key space.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import time
from dataclasses import dataclass

from petrel import format as fmt
from petrel.limits import KiB, Limits, MiB
from petrel.model import PutItem
from petrel.settings import Durability, StoreConfig
from petrel.store import Store

# Small enough that segments roll and seal every round and some objects go to the
# backend as whole blobs.
LIMITS = Limits(segment_bytes_max=1 * MiB, pack_threshold_bytes=64 * KiB)
BUCKETS = ("crash-a", "crash-b")
KEYS_PER_BUCKET = 96
WORKERS = 16
# An orphaned writer (its parent died before killing it) stops by itself.
RUN_S_MAX = 60.0
VERSION_META = "v"


def all_keys() -> list[tuple[str, str]]:
    return [(bucket, f"k/{n:03d}") for bucket in BUCKETS for n in range(KEYS_PER_BUCKET)]


def store_config(data_dir: str, durability: Durability) -> StoreConfig:
    # Compaction is off: it moves records, and the test compares record locations in
    # the live index with those of an index rebuilt from segments.
    return StoreConfig(data_dir=data_dir, durability=durability, limits=LIMITS,
                       compaction_enabled=False)


def _body_size(rng: random.Random) -> int:
    draw = rng.random()
    if draw < 0.03:
        return 0
    if draw < 0.80:
        return rng.randrange(1, 4 * KiB)
    if draw < 0.95:
        return rng.randrange(4 * KiB, 24 * KiB)
    if draw < 0.96:  # the largest object that is still packed
        return LIMITS.pack_threshold_bytes
    return rng.randrange(LIMITS.pack_threshold_bytes + 1, 2 * LIMITS.pack_threshold_bytes)


def body_for(bucket: str, key: str, version: str) -> bytes:
    """The one body (size included) that version `version` of bucket/key has."""
    name = f"{bucket}/{key}@{version}|".encode()
    rng = random.Random(hashlib.blake2b(name, digest_size=16).digest())
    size = _body_size(rng)
    return (name + rng.randbytes(size))[:size]


def meta_for(version: str) -> fmt.ObjectMeta:
    return fmt.ObjectMeta("application/octet-stream", ((VERSION_META, version),))


# ----- the ack log -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogLine:
    kind: str  # "I" intent or "A" acknowledgement
    op: str  # "P" put or "D" delete
    bucket: str
    key: str
    version: str


def parse_log(data: bytes) -> list[LogLine]:
    """The log's whole lines; a torn last line (the writer was killed mid-write) is
    dropped."""
    lines = data.split(b"\n")[:-1]
    out = []
    for raw in lines:
        kind, op, bucket, key, version = raw.decode().split(" ")
        if kind not in ("I", "A") or op not in ("P", "D"):
            raise ValueError(f"bad ack log line {raw!r}")
        out.append(LogLine(kind, op, bucket, key, version))
    return out


class AckLog:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, op: str, targets: list[tuple[str, str, str]]) -> None:
        text = "".join(f"{kind} {op} {b} {k} {v}\n" for b, k, v in targets)
        os.write(self._fd, text.encode())


# ----- the writer --------------------------------------------------------------------
class Worker:
    def __init__(self, store: Store, log: AckLog, keys: list[tuple[str, str]],
                 rng: random.Random, prefix: str) -> None:
        self.store = store
        self.log = log
        self.keys = keys
        self.rng = rng
        self.prefix = prefix
        self.count = 0

    def _version(self) -> str:
        self.count += 1
        return f"{self.prefix}.{self.count}"

    async def run(self) -> None:
        while True:
            draw = self.rng.random()
            if draw < 0.10:
                await self._put_batch()
            elif draw < 0.22:
                await self._delete()
            else:
                await self._put_one()

    async def _put_one(self) -> None:
        bucket, key = self.rng.choice(self.keys)
        version = self._version()
        targets = [(bucket, key, version)]
        self.log.write("I", "P", targets)
        await self.store.put_object(bucket, key, body_for(bucket, key, version),
                                    meta_for(version))
        self.log.write("A", "P", targets)
        if self.rng.random() < 0.5:  # read-your-writes while running
            got = await self.store.get_object(bucket, key)
            if got.body != body_for(bucket, key, version):
                fail(f"read back {bucket}/{key}@{version}: wrong bytes")

    async def _put_batch(self) -> None:
        chosen = self.rng.sample(self.keys, self.rng.randint(2, 4))
        targets = [(b, k, self._version()) for b, k in chosen]
        items = [PutItem(b, k, body_for(b, k, v), meta_for(v)) for b, k, v in targets]
        self.log.write("I", "P", targets)
        results = await self.store.put_objects(items)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            fail(f"put_objects failed: {errors}")
        self.log.write("A", "P", targets)

    async def _delete(self) -> None:
        chosen = self.rng.sample(self.keys, self.rng.randint(1, 2))
        bucket = chosen[0][0]
        chosen = [(b, k) for b, k in chosen if b == bucket]
        targets = [(b, k, self._version()) for b, k in chosen]
        self.log.write("I", "D", targets)
        results = await self.store.delete_objects(bucket, [k for _, k in chosen])
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            fail(f"delete_objects failed: {errors}")
        self.log.write("A", "D", targets)


def fail(message: str) -> None:
    print(f"crash_writer: {message}", file=sys.stderr, flush=True)
    os._exit(3)


async def write_until_killed(data_dir: str, log_path: str, round_no: int,
                             durability: Durability, seed: int) -> None:
    rng = random.Random(seed)
    store = await Store.open(store_config(data_dir, durability))
    for bucket in BUCKETS:
        if bucket not in {b.name for b in store.list_buckets()}:
            await store.create_bucket(bucket)
    log = AckLog(log_path)
    keys = all_keys()
    rng.shuffle(keys)
    print("ready", flush=True)
    workers = [Worker(store, log, keys[n::WORKERS], random.Random(rng.random()),
                      f"{round_no}.{n}") for n in range(WORKERS)]
    deadline = time.monotonic() + RUN_S_MAX
    tasks = [asyncio.create_task(w.run()) for w in workers]
    done, _ = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()),
                                 return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()  # a worker that raised: let the exception end the writer
    fail("not killed within RUN_S_MAX")


def main(argv: list[str]) -> None:
    data_dir, log_path, round_no, durability, seed = argv
    asyncio.run(write_until_killed(data_dir, log_path, int(round_no),
                                   Durability(durability), int(seed)))


if __name__ == "__main__":
    main(sys.argv[1:])
