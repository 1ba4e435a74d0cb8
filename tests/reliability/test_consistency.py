"""Consistency under concurrency (issue 9, item 1).

Many client threads run PUT, overwrite, GET, DELETE, LIST, batch put and batch get on a
small set of overlapping keys against a live gateway, for a bounded time. Every
operation is recorded with its start, end and value (SHA-256 of the bytes; every write
writes unique bytes), and `petrel.testing.history.check` verifies the history: every
read returns a value some write produced and that was not yet overwritten when the
read started (or absence after a delete), read-after-write, no going back in time, no
lost update; listings during the run and after it contain exactly the committed keys.

The checker is tested too: fabricated bad histories must fail it.

Scale: `PETREL_CONSISTENCY_S` seconds of load (default 8) with `PETREL_CONSISTENCY_CLIENTS`
threads (default 8).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field

from relsupport import client

from petrel import wire
from petrel.errors import MalformedBatch
from petrel.testing.gateway import Gateway
from petrel.testing.history import ABSENT, History, Read, Write, check
from petrel.testing.s3raw import S3Failure, S3Raw

DURATION_S = float(os.environ.get("PETREL_CONSISTENCY_S", "8"))
CLIENTS = int(os.environ.get("PETREL_CONSISTENCY_CLIENTS", "8"))
OPS_PER_CLIENT_MAX = 5000  # a bound on the loop besides time
# Overlapping keys, including ones that need percent-encoding and look like paths.
KEYS = [f"k/{i:02d}" for i in range(16)] + ["dir/a b", "ü/ñ.jpg", "x+y=z", "a//b", "q?&#"]
LARGE_BYTES = 100_000  # over the test gateway's 64 KiB pack threshold: stored whole
SEED = 20260911


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Recorder:
    """One history for all threads (appends under a lock), plus what went wrong that
    is not a consistency question (unexpected statuses, wrong ETags)."""

    history: History
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def write(self, item: Write) -> None:
        with self.lock:
            self.history.write(item)
            self.counts[item.op] = self.counts.get(item.op, 0) + 1

    def read(self, item: Read) -> None:
        with self.lock:
            self.history.read(item)
            self.counts[item.op] = self.counts.get(item.op, 0) + 1

    def listing(self, keys: list[str], start: float, end: float, client_id: int) -> None:
        with self.lock:
            self.history.listing(keys, start, end, "list", client_id)
            self.counts["list"] = self.counts.get("list", 0) + 1

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


class Worker:
    def __init__(self, number: int, s3: S3Raw, bucket: str, recorder: Recorder) -> None:
        self.number = number
        self.s3 = s3
        self.bucket = bucket
        self.recorder = recorder
        self.random = random.Random(SEED + number)
        self.sequence = 0

    def value(self) -> bytes:
        self.sequence += 1
        size = LARGE_BYTES if self.random.random() < 0.03 else self.random.randint(0, 4000)
        head = f"{self.number}:{self.sequence}:".encode()
        return head + self.random.randbytes(size)

    def run(self, deadline: float) -> None:
        operations = [(self.put, 30), (self.get, 30), (self.delete, 8),
                      (self.batch_put, 10), (self.batch_get, 12), (self.list, 10)]
        functions = [f for f, _ in operations]
        weights = [w for _, w in operations]
        for _ in range(OPS_PER_CLIENT_MAX):
            if time.monotonic() >= deadline:
                return
            self.random.choices(functions, weights)[0]()

    def put(self) -> None:
        key, data = self.random.choice(KEYS), self.value()
        start = time.monotonic()
        try:
            response = self.s3.put(self.bucket, key, data)
        except S3Failure as exc:
            self._unknown("put", key, sha(data), start, exc)
            return
        end = time.monotonic()
        acked = response.status == 200
        if not acked:
            self.recorder.error(f"PUT {key!r}: HTTP {response.status} {response.code}")
        elif response.headers.get("etag") != f'"{hashlib.md5(data).hexdigest()}"':
            self.recorder.error(f"PUT {key!r}: ETag {response.headers.get('etag')} is not "
                                "the MD5 of the body")
        self.recorder.write(Write(key, sha(data), start, end, acked, "put", self.number))

    def delete(self) -> None:
        key = self.random.choice(KEYS)
        start = time.monotonic()
        try:
            response = self.s3.delete(self.bucket, key)
        except S3Failure as exc:
            self._unknown("delete", key, ABSENT, start, exc)
            return
        acked = response.status == 204
        if not acked:
            self.recorder.error(f"DELETE {key!r}: HTTP {response.status} {response.code}")
        self.recorder.write(Write(key, ABSENT, start, time.monotonic(), acked, "delete",
                                  self.number))

    def get(self) -> None:
        key = self.random.choice(KEYS)
        start = time.monotonic()
        try:
            response = self.s3.get(self.bucket, key)
        except S3Failure as exc:
            self.recorder.error(f"GET {key!r}: no answer: {exc}")
            return
        end = time.monotonic()
        if response.status == 200:
            self.recorder.read(Read(key, sha(response.body), start, end, "get", self.number))
        elif response.status == 404 and response.code == "NoSuchKey":
            self.recorder.read(Read(key, ABSENT, start, end, "get", self.number))
        else:
            self.recorder.error(f"GET {key!r}: HTTP {response.status} {response.code}")

    def batch_put(self) -> None:
        keys = self.random.sample(KEYS, self.random.randint(2, 5))
        items = [(key, self.value()) for key in keys]
        start = time.monotonic()
        try:
            status, frames = self.s3.batch_put(self.bucket, items)
        except (S3Failure, MalformedBatch) as exc:
            for key, data in items:
                self._unknown("batch-put", key, sha(data), start, exc)
            return
        end = time.monotonic()
        if status != 200 or len(frames) != len(items):
            self.recorder.error(f"batch put: HTTP {status}, {len(frames)} frames")
        by_key = {frame.key: frame for frame in frames}
        for key, data in items:
            frame = by_key.get(key)
            acked = frame is not None and frame.status is wire.Status.OK
            if frame is not None and not acked:
                self.recorder.error(f"batch put {key!r}: {wire.parse_error_aux(frame.aux)}")
            elif acked and frame is not None and \
                    bytes(frame.aux).decode() != hashlib.md5(data).hexdigest():
                self.recorder.error(f"batch put {key!r}: ETag is not the MD5 of the body")
            self.recorder.write(Write(key, sha(data), start, end, acked, "batch-put",
                                      self.number))

    def batch_get(self) -> None:
        keys = self.random.sample(KEYS, self.random.randint(3, 8))
        start = time.monotonic()
        try:
            status, frames = self.s3.batch_get(self.bucket, keys)
        except (S3Failure, MalformedBatch) as exc:
            self.recorder.error(f"batch get: no complete answer: {exc}")
            return
        end = time.monotonic()
        if status != 200 or [f.key for f in frames] != keys:
            self.recorder.error(f"batch get: HTTP {status}, keys {[f.key for f in frames]}")
            return
        for frame in frames:
            value: str | None
            if frame.status is wire.Status.OK:
                value = sha(frame.data)
            elif frame.status is wire.Status.NOT_FOUND:
                value = ABSENT
            else:
                self.recorder.error(f"batch get {frame.key!r}: "
                                    f"{wire.parse_error_aux(frame.aux)}")
                continue
            self.recorder.read(Read(frame.key, value, start, end, "batch-get", self.number))

    def list(self) -> None:
        start = time.monotonic()
        try:
            # Small pages: a listing spans several requests while writers change keys.
            keys = self.s3.list_all(self.bucket, max_keys=7)
        except (S3Failure, RuntimeError) as exc:
            self.recorder.error(f"list: {exc}")
            return
        self.recorder.listing(keys, start, time.monotonic(), self.number)

    def _unknown(self, op: str, key: str, value: str | None, start: float,
                 exc: Exception) -> None:
        self.recorder.error(f"{op} {key!r}: no answer: {exc}")
        self.recorder.write(Write(key, value, start, time.monotonic(), False, op,
                                  self.number))


def run_load(gateway: Gateway, bucket: str, duration_s: float, clients: int) -> Recorder:
    recorder = Recorder(History(KEYS))
    deadline = time.monotonic() + duration_s
    raws = [client(gateway) for _ in range(clients)]
    workers = [Worker(i, raws[i], bucket, recorder) for i in range(clients)]
    threads = [threading.Thread(target=w.run, args=(deadline,), name=f"client-{w.number}")
               for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 120)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    for raw in raws:
        raw.close()
    return recorder


def quiescent_reads(s3: S3Raw, bucket: str, recorder: Recorder) -> None:
    """After every client stopped: a GET of each key and a full listing. These are
    ordinary reads that start after every write ended: the lost-update check."""
    for key in KEYS:
        start = time.monotonic()
        response = s3.get(bucket, key)
        value = sha(response.body) if response.status == 200 else ABSENT
        assert response.status in (200, 404), (key, response.status, response.body)
        recorder.read(Read(key, value, start, time.monotonic(), "final-get"))
    start = time.monotonic()
    listed = s3.list_all(bucket)
    recorder.history.listing(listed, start, time.monotonic(), "final-list")
    present = {key for key in KEYS if s3.get(bucket, key).status == 200}
    assert sorted(listed) == sorted(present), "the listing is not the set of stored keys"


def test_concurrent_clients_history_is_consistent(gateway: Gateway, s3: S3Raw,
                                                  bucket: str) -> None:
    recorder = run_load(gateway, bucket, DURATION_S, CLIENTS)
    quiescent_reads(s3, bucket, recorder)
    assert recorder.errors == [], recorder.errors[:20]
    history = recorder.history
    # The run must have exercised what it claims to check.
    for op in ("put", "get", "delete", "batch-put", "batch-get", "list"):
        assert recorder.counts.get(op, 0) >= 5, recorder.counts
    overwrites = len(history.writes) - len({w.key for w in history.writes})
    assert overwrites > 50, recorder.counts
    problems = check(history)
    print(f"consistency: {recorder.counts}, {len(history.reads)} reads checked")
    assert problems == [], "\n".join(problems[:30])


# ----- the checker fails bad histories ---------------------------------------------------
def _history(*items: Write | Read) -> History:
    history = History(["k", "j"])
    for item in items:
        if isinstance(item, Write):
            history.write(item)
        else:
            history.read(item)
    return history


def test_checker_accepts_a_good_history() -> None:
    history = _history(
        Write("k", "v1", 0, 1, True),
        Read("k", "v1", 2, 3),
        Write("k", "v2", 4, 6, True),
        Read("k", "v1", 5, 5.5),  # concurrent with the overwrite: old is fine
        Read("k", "v2", 5.2, 5.8),  # ... and so is new
        Read("k", "v2", 7, 8),
        Write("k", ABSENT, 9, 10, True),
        Read("k", ABSENT, 11, 12),
        Write("k", "v3", 13, 14, False),  # unacknowledged: may or may not be there
        Read("k", ABSENT, 15, 16),
        Read("k", "v3", 17, 18),
        Read("j", ABSENT, 0, 1),
    )
    history.listing(["k"], 19, 20)
    assert check(history) == []


def test_checker_finds_a_stale_read() -> None:
    history = _history(Write("k", "v1", 0, 1, True), Write("k", "v2", 2, 3, True),
                       Read("k", "v1", 4, 5))
    [problem] = check(history)
    assert "stale" in problem


def test_checker_finds_a_missed_write_read_after_write() -> None:
    history = _history(Write("k", "v1", 0, 1, True), Read("k", ABSENT, 2, 3))
    [problem] = check(history)
    assert "stale" in problem


def test_checker_finds_a_lost_update() -> None:
    # Two acknowledged overwrites; the quiescent read sees the first: the second is lost.
    history = _history(Write("k", "v1", 0, 1, True), Write("k", "v2", 1.5, 2, True),
                       Read("k", "v1", 10, 11, "final-get"))
    assert any("stale" in p for p in check(history))


def test_checker_finds_a_value_nobody_wrote() -> None:
    history = _history(Write("k", "v1", 0, 1, True), Read("k", "torn", 2, 3))
    [problem] = check(history)
    assert "no write produced" in problem


def test_checker_finds_a_read_from_the_future() -> None:
    history = _history(Read("k", "v1", 0, 1), Write("k", "v1", 2, 3, True))
    [problem] = check(history)
    assert "stale" in problem


def test_checker_finds_a_resurrected_delete() -> None:
    history = _history(Write("k", "v1", 0, 1, True), Write("k", ABSENT, 2, 3, True),
                       Read("k", "v1", 4, 5))
    [problem] = check(history)
    assert "stale" in problem


def test_checker_finds_reads_going_back_in_time() -> None:
    # Both reads overlap the second write, so each alone is fine; but the later read
    # returns the older value after an earlier read saw the newer one.
    history = _history(Write("k", "v1", 0, 1, True), Write("k", "v2", 2, 10, True),
                       Read("k", "v2", 3, 4), Read("k", "v1", 5, 6))
    [problem] = check(history)
    assert "back in time" in problem


def test_checker_finds_listing_problems() -> None:
    history = _history(Write("k", "v1", 0, 1, True), Write("j", ABSENT, 0, 1, True))
    history.listing([], 2, 3)  # k committed but not listed
    assert any("'k'" in p and "stale" in p for p in check(history))
    history = _history(Write("k", ABSENT, 0, 1, True))
    history.listing(["k"], 2, 3)  # deleted but listed
    assert any("'k'" in p for p in check(history))
    history = _history()
    history.listing(["ghost"], 2, 3)  # never written by anyone
    assert any("ghost" in p for p in check(history))
