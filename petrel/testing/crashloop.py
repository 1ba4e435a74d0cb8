"""Crash and restart under load (issue 9, item 2): the gateway process is SIGKILLed at a
random moment of mixed load and restarted as the README starts it
(`python -m petrel serve --data DIR ...`); every acknowledged write must then be
present and byte-identical.

Used by `bench/crash_loop.py` (the long version, `--rounds 50`) and by
tests/reliability/test_crash_restart.py (5 rounds in CI).

How a round goes:

1. start the gateway on the data directory the previous rounds left (durability
   rotates through batch, always and none: a process crash loses nothing in any mode);
2. verify every key against the model (below), and make what was found the model;
3. run mixed load from `threads` client threads: PUT (overwrites, some objects larger
   than the pack threshold, stored whole), DELETE and batch put, each thread on keys of
   its own so that per key the operations are sequential and the model exact;
4. SIGKILL the gateway after a random delay, while requests are in flight.

Every `early_kill_every`-th round also kills a gateway while it is still starting
(opening the index, replaying the tail of the last crash) before the normal start.

The model, per key: the state after its last acknowledged operation (a value's
SHA-256, or absent), and the state the operation in flight at the kill would leave, if
any. After the restart the key must be in one of those states: the acknowledged one,
or the in-flight one (a write in flight may be either old or new, never torn, never
anything else). A listing must show exactly the keys found present.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from petrel import wire
from petrel.errors import MalformedBatch
from petrel.testing.gateway import Gateway, free_port, start_gateway, stop_gateway
from petrel.testing.s3raw import S3Failure, S3Raw

ACCESS_KEY = "PKCRASHLOOP000000001"
SECRET_KEY = "crash-loop-secret-0123456789abcdefghijk"
BUCKET = "crash"
ABSENT = "absent"
DURABILITIES = ("batch", "always", "none")
STORE_TOML = """\
[store]
pack_threshold_bytes = 65536
segment_bytes_max = 524288
seal_idle_s = 1.0
compaction_dead_fraction = 0.3
"""
LARGE_BYTES = 90_000  # over the pack threshold above: stored whole, not packed
OPS_PER_THREAD_MAX = 20_000  # a bound besides time


@dataclass(frozen=True, slots=True)
class Options:
    work_dir: str
    rounds: int = 5
    threads: int = 6
    keys_per_thread: int = 30
    kill_after_s: tuple[float, float] = (0.3, 2.0)
    load_s_max: float = 10.0  # threads stop by then even if the kill never came
    early_kill_every: int = 4  # 0: never
    seed: int = 20260911


@dataclass(slots=True)
class KeyState:
    acked: str = ABSENT  # sha256 hex of the value, or ABSENT
    in_flight: set[str] = field(default_factory=set)  # states an unanswered op may leave


@dataclass(slots=True)
class RoundResult:
    number: int
    durability: str
    start_s: float  # spawn to serving, with recovery
    acked_ops: int
    unknown_ops: int  # in flight at the kill (or failed without an answer)
    in_flight_applied: int  # of those, found applied after the restart
    keys_present: int
    problems: list[str]


@dataclass(slots=True)
class Summary:
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"round {r.number}: {p}" for r in self.rounds for p in r.problems]

    def table(self) -> str:
        lines = ["| round | durability | restart s | acked ops | in flight at kill "
                 "| applied | keys present | problems |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rounds:
            lines.append(f"| {r.number} | {r.durability} | {r.start_s:.2f} | {r.acked_ops} "
                         f"| {r.unknown_ops} | {r.in_flight_applied} | {r.keys_present} "
                         f"| {len(r.problems)} |")
        acked = sum(r.acked_ops for r in self.rounds)
        lines.append(f"\n{len(self.rounds)} rounds, {acked} acknowledged operations, "
                     f"{len(self.problems)} problems")
        return "\n".join(lines)


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class Model:
    """Per-key expected state, shared by the load threads (each owns its keys)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = {key: KeyState() for key in keys}
        self.lock = threading.Lock()
        self.acked_ops = 0
        self.unknown_ops = 0

    def begin(self, key: str, state: str) -> None:
        with self.lock:
            self.keys[key].in_flight.add(state)

    def ack(self, key: str, state: str) -> None:
        with self.lock:
            entry = self.keys[key]
            entry.acked = state
            entry.in_flight.discard(state)
            self.acked_ops += 1

    def refused(self, key: str, state: str) -> None:
        """The gateway answered with an error: the operation did not happen."""
        with self.lock:
            self.keys[key].in_flight.discard(state)

    def unknown(self) -> None:
        with self.lock:
            self.unknown_ops += 1


class LoadThread(threading.Thread):
    def __init__(self, number: int, endpoint: str, keys: list[str], model: Model,
                 rng: random.Random, stop: threading.Event, deadline: float) -> None:
        super().__init__(name=f"crash-load-{number}", daemon=True)
        self.s3 = S3Raw(endpoint, ACCESS_KEY, SECRET_KEY, timeout_s=15.0)
        self.number = number
        self.my_keys = keys
        self.model = model
        self.rng = rng
        self.stop = stop
        self.deadline = deadline
        self.sequence = 0
        self.errors: list[str] = []

    def value(self, key: str) -> bytes:
        self.sequence += 1
        size = LARGE_BYTES if self.rng.random() < 0.04 else self.rng.randint(0, 6000)
        return f"{key}:{self.number}:{self.sequence}:".encode() + self.rng.randbytes(size)

    def run(self) -> None:
        try:
            for _ in range(OPS_PER_THREAD_MAX):
                if self.stop.is_set() or time.monotonic() >= self.deadline:
                    return
                choice = self.rng.random()
                if choice < 0.6:
                    alive = self.put()
                elif choice < 0.75:
                    alive = self.delete()
                else:
                    alive = self.batch_put()
                if not alive:
                    return  # the gateway is gone: what is in flight stays unknown
        except Exception as exc:  # noqa: BLE001 - reported as a problem of the round
            self.errors.append(f"load thread failed: {exc!r}")
        finally:
            self.s3.close()

    def put(self) -> bool:
        key = self.rng.choice(self.my_keys)
        data = self.value(key)
        return self._single(key, sha(data), lambda: self.s3.put(BUCKET, key, data).status,
                            200)

    def delete(self) -> bool:
        key = self.rng.choice(self.my_keys)
        return self._single(key, ABSENT, lambda: self.s3.delete(BUCKET, key).status, 204)

    def _single(self, key: str, state: str, send: Callable[[], int], ok: int) -> bool:
        self.model.begin(key, state)
        try:
            status = send()
        except S3Failure:
            self.model.unknown()
            return False
        if status == ok:
            self.model.ack(key, state)
        else:
            self.model.refused(key, state)
            self.errors.append(f"{key!r}: HTTP {status}")
        return True

    def batch_put(self) -> bool:
        keys = self.rng.sample(self.my_keys, self.rng.randint(1, min(6, len(self.my_keys))))
        items = [(key, self.value(key)) for key in keys]
        for key, data in items:
            self.model.begin(key, sha(data))
        try:
            status, frames = self.s3.batch_put(BUCKET, items)
        except (S3Failure, MalformedBatch):
            self.model.unknown()
            return False
        by_key = {frame.key: frame for frame in frames}
        for key, data in items:
            frame = by_key.get(key)
            if status == 200 and frame is not None and frame.status is wire.Status.OK:
                self.model.ack(key, sha(data))
            else:
                self.model.refused(key, sha(data))
                self.errors.append(f"batch put {key!r}: HTTP {status}")
        return True


class CrashLoop:
    def __init__(self, options: Options, log: Callable[[str], None] = print) -> None:
        self.options = options
        self.log = log
        self.rng = random.Random(options.seed)
        self.data_dir = os.path.join(options.work_dir, "data")
        self.config = os.path.join(options.work_dir, "petrel.toml")
        os.makedirs(options.work_dir, exist_ok=True)
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(STORE_TOML)
        keys = [f"t{t}/k{k:03d}" for t in range(options.threads)
                for k in range(options.keys_per_thread)]
        self.model = Model(keys)
        self.summary = Summary()

    def _flags(self, durability: str) -> tuple[str, ...]:
        return ("--config", self.config, "--access-key", ACCESS_KEY, "--secret-key",
                SECRET_KEY, "--durability", durability)

    def run(self) -> Summary:
        for number in range(1, self.options.rounds + 1):
            result = self.round(number)
            self.summary.rounds.append(result)
            self.log(f"round {number}/{self.options.rounds}: {result.durability}, restart "
                     f"{result.start_s:.2f}s, {result.acked_ops} acked, "
                     f"{result.unknown_ops} in flight ({result.in_flight_applied} applied), "
                     f"{result.keys_present} keys present, {len(result.problems)} problems")
            for problem in result.problems[:10]:
                self.log(f"  PROBLEM: {problem}")
        self.final_check()
        return self.summary

    def round(self, number: int) -> RoundResult:
        durability = DURABILITIES[(number - 1) % len(DURABILITIES)]
        every = self.options.early_kill_every
        if every and number % every == 0:
            self.kill_while_starting(durability)
        started = time.monotonic()
        gateway = start_gateway(self.data_dir, *self._flags(durability), timeout_s=120.0)
        start_s = time.monotonic() - started
        try:
            problems, applied, present = self.verify(gateway)
            acked_before, unknown_before = self.model.acked_ops, self.model.unknown_ops
            errors = self.load_and_kill(gateway)
            problems += errors
        except BaseException:
            gateway.process.kill()
            gateway.process.wait()
            raise
        return RoundResult(number, durability, start_s, self.model.acked_ops - acked_before,
                           self.model.unknown_ops - unknown_before, applied, present,
                           problems)

    def kill_while_starting(self, durability: str) -> None:
        """Start a gateway and SIGKILL it after a random delay, ready or not."""
        port = free_port()
        command = [sys.executable, "-m", "petrel", "serve", "--data", self.data_dir,
                   "--host", "127.0.0.1", "--port", str(port), *self._flags(durability)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(self.rng.uniform(0.05, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()

    def load_and_kill(self, gateway: Gateway) -> list[str]:
        options = self.options
        stop = threading.Event()
        deadline = time.monotonic() + options.load_s_max
        threads = [
            LoadThread(t, gateway.endpoint,
                       [k for k in self.model.keys if k.startswith(f"t{t}/")], self.model,
                       random.Random(self.rng.random()), stop, deadline)
            for t in range(options.threads)]
        for thread in threads:
            thread.start()
        time.sleep(self.rng.uniform(*options.kill_after_s))
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait()
        stop.set()
        for thread in threads:
            thread.join(30.0)
            if thread.is_alive():
                raise RuntimeError(f"{thread.name} did not stop after the kill")
        return [f"unexpected answer {e}" for t in threads for e in t.errors]

    def verify(self, gateway: Gateway) -> tuple[list[str], int, int]:
        """Check every key against the model, then make what was found the model.
        Returns (problems, in-flight operations found applied, keys present)."""
        problems: list[str] = []
        applied = 0
        found: dict[str, str] = {}
        with S3Raw(gateway.endpoint, ACCESS_KEY, SECRET_KEY) as s3:
            created = s3.create_bucket(BUCKET)
            if created.status not in (200, 409):
                raise RuntimeError(f"create bucket: HTTP {created.status} {created.body!r}")
            for key, state in self.model.keys.items():
                response = s3.get(BUCKET, key)
                if response.status == 200:
                    now = sha(response.body)
                elif response.status == 404 and response.code == "NoSuchKey":
                    now = ABSENT
                else:
                    problems.append(f"GET {key!r}: HTTP {response.status} {response.code}")
                    continue
                found[key] = now
                if now == state.acked:
                    pass
                elif now in state.in_flight:
                    applied += 1
                elif now == ABSENT:
                    problems.append(f"{key!r}: LOST: acknowledged value {state.acked[:12]} "
                                    "is missing")
                elif state.acked == ABSENT:
                    problems.append(f"{key!r}: acknowledged absent (deleted or never "
                                    f"written) but present with {len(response.body)} bytes "
                                    "that no operation in flight wrote")
                else:
                    problems.append(f"{key!r}: WRONG BYTES: {len(response.body)} bytes "
                                    f"{now[:12]}, acknowledged {state.acked[:12]} "
                                    f"(in flight: {sorted(s[:12] for s in state.in_flight)})")
            problems += self._check_listing_and_batch(s3, found)
        for key, now in found.items():
            self.model.keys[key] = KeyState(acked=now)
        return problems, applied, sum(v != ABSENT for v in found.values())

    def _check_listing_and_batch(self, s3: S3Raw, found: dict[str, str]) -> list[str]:
        problems = []
        present = sorted(k for k, v in found.items() if v != ABSENT)
        listed = s3.list_all(BUCKET)
        if listed != present:
            extra = sorted(set(listed) - set(present))[:5]
            missing = sorted(set(present) - set(listed))[:5]
            problems.append(f"listing differs from GETs: extra {extra}, missing {missing}")
        keys = list(found)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            status, frames = s3.batch_get(BUCKET, chunk)
            if status != 200:
                problems.append(f"batch get: HTTP {status}")
                continue
            for frame in frames:
                got = sha(frame.data) if frame.status is wire.Status.OK else ABSENT
                if got != found[frame.key]:
                    problems.append(f"batch get of {frame.key!r} disagrees with GET")
        return problems

    def final_check(self) -> None:
        """A last start, verification, and a clean stop (SIGTERM, exit 0)."""
        gateway = start_gateway(self.data_dir, *self._flags("batch"), timeout_s=120.0)
        try:
            problems, applied, present = self.verify(gateway)
        finally:
            code = stop_gateway(gateway)
        if code != 0:
            problems.append(f"clean stop exited {code}")
        self.summary.rounds.append(RoundResult(len(self.summary.rounds) + 1, "final",
                                               0.0, 0, 0, applied, present, problems))
