"""The batch read path (`Store.get_objects`, petrel/batchread.py): one index multi-get
for the whole batch, reads planned by segment and offset, results in request order
whatever the keys: missing, duplicated, invalid, in other buckets, ranged. (A corrupt
record failing alone in a batch: tests/engine/test_corruption.py.)"""

from __future__ import annotations

import os

from petrel import format as fmt
from petrel.batchread import _Want, plan_runs
from petrel.errors import InvalidRange, KeyTooLongError, NoSuchBucket, NoSuchKey
from petrel.limits import KiB
from petrel.model import ByteRange, GetItem, PutItem
from petrel.store import Store


def _want(position: int, segment_id: int, offset: int, length: int) -> _Want:
    location = fmt.Location(segment_id, offset, length, 0)
    return _Want(position, fmt.Entry(location, 0, length, 0, 0, 0, bytes(16), b""), b"k")


def test_plan_runs_merges_neighbours_per_segment_in_offset_order() -> None:
    wants = [_want(0, 2, 5000, 100), _want(1, 1, 900, 100), _want(2, 1, 0, 100),
             _want(3, 2, 0, 100), _want(4, 1, 100, 100), _want(5, 1, 100, 100)]
    runs = plan_runs(wants, gap_bytes=1000, run_bytes_max=10_000)
    assert [(r.segment_id, r.start, r.end) for r in runs] == [(1, 0, 1000), (2, 0, 100),
                                                             (2, 5000, 5100)]
    assert [[w.position for w in r.wants] for r in runs] == [[2, 4, 5, 1], [3], [0]]


def test_plan_runs_bounds_a_run_but_not_a_record() -> None:
    wants = [_want(i, 1, i * 100, 100) for i in range(10)] + [_want(10, 1, 1000, 5000)]
    runs = plan_runs(wants, gap_bytes=0, run_bytes_max=300)
    assert [(r.start, r.end) for r in runs] == [(0, 300), (300, 600), (600, 900),
                                                (900, 1000), (1000, 6000)]


async def test_one_batch_with_missing_duplicate_invalid_and_foreign_keys(store: Store
                                                                         ) -> None:
    await store.create_bucket("one")
    await store.create_bucket("two")
    data = {f"k{i}": os.urandom(100 + i) for i in range(40)}
    await store.put_objects([PutItem("one", k, v) for k, v in data.items()])
    await store.put_objects([PutItem("two", "k1", b"other bucket"),
                             PutItem("one", "large", os.urandom(40 * KiB))])
    wanted = [GetItem("one", "k3"), GetItem("one", "missing"), GetItem("one", "k3"),
              GetItem("two", "k1"), GetItem("nope", "k1"), GetItem("one", "x" * 2000),
              GetItem("one", "k5", ByteRange(10, 20)), GetItem("one", "k5", ByteRange(500)),
              GetItem("one", "large", ByteRange(40 * KiB - 2)), GetItem("two", "k3"),
              *[GetItem("one", k) for k in reversed(data)]]
    got = await store.get_objects(wanted)
    assert [g.item for g in got] == wanted
    assert got[0].data == got[2].data == data["k3"]
    assert got[0].entry is not None and got[0].entry.size == len(data["k3"])
    assert isinstance(got[1].error, NoSuchKey) and got[1].data is None
    assert got[3].data == b"other bucket"
    assert isinstance(got[4].error, NoSuchBucket)
    assert isinstance(got[5].error, KeyTooLongError)
    assert got[6].data == data["k5"][10:30]
    assert isinstance(got[7].error, InvalidRange)
    large = (await store.get_object("one", "large")).body
    assert got[8].data == large[-2:]
    assert isinstance(got[9].error, NoSuchKey)
    assert [g.data for g in got[10:]] == list(reversed(data.values()))

