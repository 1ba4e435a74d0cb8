"""Crash test: a writer process is killed with SIGKILL at random moments while it
writes concurrently; after every restart the store must hold exactly what was
acknowledged (or what an in-flight operation may have left), byte for byte, and the
index rebuilt from segments alone must equal the live index.

The writer is tests/engine/crash_writer.py (its docstring describes the ack log). Rounds
run on one data directory, so state, segments and torn tails accumulate across crashes;
durability alternates between `always` and `batch`. Randomness is seeded; only the kill
moments depend on scheduling.

Per key the checker keeps the state it last verified (a version, or absent). From a
round's log it derives what may be visible now:

* the state after the key's last acknowledged operation (or the state from before the
  round when it had none), and
* if an operation was still in flight (an intent with no acknowledgement), its state too:
  an unacknowledged write may or may not have taken effect.

Anything else is a failure: a lost acknowledged write, a version older than the last
acknowledged one, a body that is not byte-identical to the version its metadata names,
or a key that nobody wrote. What is found becomes the state the next round starts from,
so an unacknowledged write that became visible must also stay visible.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from petrel import format as fmt
from petrel import index as ix
from petrel.backends.local import LocalBackend
from petrel.errors import NoSuchKey
from petrel.recovery import index_dir, rebuild_index, segment_dir
from petrel.segments import local_segment_path
from petrel.settings import Durability
from petrel.store import Store

ROUNDS = 24
SEED = 20240611
# Every EARLY_KILL_EVERY-th round kills the writer while it may still be opening the
# store (replaying tails, sealing segments left over from the last crash).
EARLY_KILL_EVERY = 6
EARLY_KILL_S = (0.05, 0.6)
KILL_AFTER_READY_S = (0.0, 1.0)
READY_TIMEOUT_S = 30.0

WRITER_PATH = Path(__file__).with_name("crash_writer.py")

# (op, version): ("P", v) means version v is visible, ("D", "") that the key is absent.
State = tuple[str, str]
ABSENT: State = ("D", "")


def load_writer() -> ModuleType:
    """crash_writer.py runs as a script in the writer process; the checker imports the
    same file by path (tests/ is not a package) for its content and log functions."""
    name = "petrel_tests_crash_writer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, WRITER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


writer = load_writer()


# ----- running and killing the writer -----------------------------------------------
async def run_and_kill(data_dir: Path, log_path: Path, round_no: int,
                       durability: Durability, rng: random.Random) -> None:
    stderr_path = log_path.with_suffix(".stderr")
    with open(stderr_path, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(WRITER_PATH), str(data_dir), str(log_path), str(round_no),
            durability.value, str(SEED + round_no),
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        if round_no % EARLY_KILL_EVERY == EARLY_KILL_EVERY - 1:
            await asyncio.sleep(rng.uniform(*EARLY_KILL_S))
        else:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if line != b"ready\n":
                await asyncio.wait_for(process.wait(), READY_TIMEOUT_S)
                raise AssertionError(_writer_died(process, stderr_path, line))
            await asyncio.sleep(rng.uniform(*KILL_AFTER_READY_S))
    finally:
        # os.kill, once: Process.kill() polls (waitpid) first, and a poll that reaps
        # the child steals its exit status from asyncio's child watcher.
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL, _writer_died(process, stderr_path, b"")


def _writer_died(process: asyncio.subprocess.Process, stderr_path: Path, line: bytes
                 ) -> str:
    return (f"writer exited with {process.returncode} before it was killed "
            f"(stdout {line!r}):\n{stderr_path.read_text(errors='replace')}")


# ----- what may be visible -----------------------------------------------------------
def allowed_states(before: dict[tuple[str, str], State], log: list[Any]
                   ) -> dict[tuple[str, str], set[State]]:
    """Per key, the states the store may show after this round's crash (`log`: the
    round's crash_writer.LogLine list)."""
    acked = dict(before)
    in_flight: dict[tuple[str, str], State] = {}
    for line in log:
        target = (line.bucket, line.key)
        state = (line.op, line.version if line.op == "P" else "")
        if line.kind == "I":
            assert target not in in_flight, f"two operations in flight on {target}"
            in_flight[target] = state
        else:
            assert in_flight.pop(target) == state, f"ack without intent on {target}"
            acked[target] = state
    allowed = {target: {state} for target, state in acked.items()}
    for target, state in in_flight.items():
        allowed[target].add(state)
    return allowed


async def observe(store: Store, bucket: str, key: str) -> State:
    """The key's state as the store shows it, verified byte for byte."""
    try:
        got = await store.get_object(bucket, key)
    except NoSuchKey:
        return ABSENT
    versions = dict(got.info.user_metadata)
    version = versions.get(writer.VERSION_META)
    assert version is not None, f"{bucket}/{key}: object no writer wrote: {got.info}"
    expected = writer.body_for(bucket, key, version)
    assert got.body == expected, f"{bucket}/{key}@{version}: body differs (garbage)"
    head = store.head_object(bucket, key)
    assert head.size == len(expected) and head.etag == got.info.etag
    return ("P", version)


def listed_keys(store: Store, bucket: str) -> set[str]:
    keys: set[str] = set()
    start_after = ""
    while True:
        page = store.list_objects(bucket, start_after=start_after, max_keys=100)
        keys.update(o.key for o in page.objects)
        if not page.is_truncated:
            return keys
        # Each page must move forward, or a listing bug would loop here for ever.
        assert page.next_marker is not None and page.next_marker > start_after
        start_after = page.next_marker


@dataclass(slots=True)
class RecoveryTotals:
    """What the reopens after the kills had to recover, summed over the rounds."""

    replayed_records: int = 0
    cut_bytes: int = 0


async def check_store(data_dir: Path, durability: Durability,
                      allowed: dict[tuple[str, str], set[State]], recovery: RecoveryTotals
                      ) -> tuple[dict[tuple[str, str], State], dict[str, object]]:
    """Reopen after the crash and check every key. Returns the states found and the live
    index (bucket rows and object entries) for the rebuild comparison."""
    store = await Store.open(writer.store_config(str(data_dir), durability))
    try:
        # The index is written after the segment bytes it points at, and a killed
        # process loses neither from the page cache: it is never ahead of a segment.
        assert not store.open_report.rebuilt, "index ahead of its segments after a kill"
        recovery.replayed_records += store.open_report.replayed_records
        recovery.cut_bytes += store.open_report.cut_bytes
        assert [b.name for b in store.list_buckets()] == sorted(writer.BUCKETS)
        found: dict[tuple[str, str], State] = {}
        for bucket, key in writer.all_keys():
            state = await observe(store, bucket, key)
            assert state in allowed[(bucket, key)], (
                f"{bucket}/{key}: found {state}, allowed {allowed[(bucket, key)]}")
            found[(bucket, key)] = state
        for bucket in writer.BUCKETS:
            visible = {k for (b, k), s in found.items() if b == bucket and s != ABSENT}
            assert listed_keys(store, bucket) == visible, f"{bucket}: listing differs"
        live = index_contents(store.index)
    finally:
        await store.close()
    return found, live


# ----- live index vs rebuilt index ---------------------------------------------------
def index_contents(index: ix.Index) -> dict[str, object]:
    """Bucket rows by name and object entries by (bucket name, key): everything the
    index holds that is derived from records (segment rows carry accounting that a
    rebuild recomputes differently, and are not compared)."""
    buckets = {b.name: b.row for b in index.buckets()}
    names = {row.bucket_id: name for name, row in buckets.items()}
    objects: dict[tuple[str, bytes], fmt.Entry] = {}
    for bucket_id, key, entry in index.iter_all_objects():
        objects[(names[bucket_id], key)] = entry
    return {"buckets": buckets, "objects": objects}


def rebuilt_contents(data_dir: Path, scratch: Path) -> dict[str, object]:
    """Rebuild the index from the segments of a copy of `data_dir` (hard links: a
    rebuild only reads segments and blobs) and read it back."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(data_dir, scratch, copy_function=os.link,
                    ignore=shutil.ignore_patterns("index", "index.old"))
    rebuild_index(str(scratch), LocalBackend(str(scratch / "blobs")))
    kv = ix.RocksKV(index_dir(str(scratch)))
    try:
        return index_contents(ix.Index(kv))
    finally:
        kv.close()
        shutil.rmtree(scratch, ignore_errors=True)


def assert_same_index(live: dict[str, object], rebuilt: dict[str, object]) -> None:
    assert live["buckets"] == rebuilt["buckets"]
    live_objects, rebuilt_objects = live["objects"], rebuilt["objects"]
    assert isinstance(live_objects, dict) and isinstance(rebuilt_objects, dict)
    only_live = sorted(live_objects.keys() - rebuilt_objects.keys())
    only_rebuilt = sorted(rebuilt_objects.keys() - live_objects.keys())
    assert not only_live and not only_rebuilt, (only_live[:5], only_rebuilt[:5])
    differ = [k for k in live_objects if live_objects[k] != rebuilt_objects[k]]
    assert not differ, [(k, live_objects[k], rebuilt_objects[k]) for k in differ[:3]]


# ----- the test ----------------------------------------------------------------------
@pytest.mark.slow
async def test_sigkill_during_concurrent_writes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(SEED)
    states: dict[tuple[str, str], State] = dict.fromkeys(writer.all_keys(), ABSENT)
    acknowledged = 0
    recovery = RecoveryTotals()
    for round_no in range(ROUNDS):
        durability = Durability.ALWAYS if round_no % 2 == 0 else Durability.BATCH
        log_path = tmp_path / f"round-{round_no:02d}.log"
        await run_and_kill(data_dir, log_path, round_no, durability, rng)
        log = writer.parse_log(log_path.read_bytes()) if log_path.exists() else []
        acknowledged += sum(line.kind == "A" for line in log)
        allowed = allowed_states(states, log)
        if not data_dir.exists():  # killed before the first open created anything
            continue
        try:
            states, live = await check_store(data_dir, durability, allowed, recovery)
        except AssertionError as exc:
            raise AssertionError(f"round {round_no} ({durability.value}): {exc}") from exc
        assert_same_index(live, rebuilt_contents(data_dir, tmp_path / "rebuilt"))
    # The rounds must have exercised the store, not just its startup.
    print(f"{ROUNDS} rounds, {acknowledged} acknowledged operations, {recovery}")
    assert acknowledged > 20 * ROUNDS
    # Kills between a commit's segment write and its index write are common (in trial
    # runs about half the reopens replayed records): some reopen must have had to.
    assert recovery.replayed_records > 0


async def test_segment_file_without_header_does_not_stop_open(tmp_path: Path) -> None:
    """A writer killed between creating a new segment file and writing its header
    (two syscalls in ActiveSegment) leaves a file shorter than a header. Open must drop
    it (it holds no acknowledged record) rather than fail or rebuild for ever."""
    config = writer.store_config(str(tmp_path / "data"), Durability.ALWAYS)
    store = await Store.open(config)
    await store.create_bucket("crash-a")
    await store.put_object("crash-a", "kept", b"acknowledged")
    next_segment_id = store.applier.next_segment_id
    await store.close()
    path = local_segment_path(segment_dir(config.data_dir), next_segment_id)
    with open(path, "xb"):
        pass

    store = await Store.open(config)
    try:
        assert (await store.get_object("crash-a", "kept")).body == b"acknowledged"
        await store.put_object("crash-a", "after", b"new")
        assert (await store.get_object("crash-a", "after")).body == b"new"
    finally:
        await store.close()
    assert not os.path.exists(path) or os.path.getsize(path) >= fmt.SEGMENT_HEADER_BYTES
