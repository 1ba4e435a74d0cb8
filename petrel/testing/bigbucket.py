"""A bucket with very many keys, filled through the batch API, and a paged listing of it
that samples the gateway's resident memory: the listing must stay bounded in memory
however many keys the bucket holds (issue 9, item 4). Used by bench/list_million.py
(a million keys) and tests/reliability/test_hostile_input.py (CI-sized)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from petrel import wire
from petrel.testing.procstat import rss_bytes
from petrel.testing.s3raw import S3Raw

BATCH_ITEMS = 1000  # the gateway's batch_items_max


def key_name(index: int) -> str:
    # Nested prefixes and a long-ish tail: keys of a training set's layout.
    return f"shard-{index // 10000:04d}/sample-{index:09d}.jpg"


def fill(s3: S3Raw, bucket: str, count: int, start: int = 0) -> float:
    """Write keys `start` .. `count - 1` (16-byte bodies), BATCH_ITEMS per batch put.
    Returns the seconds it took. Raises RuntimeError on any refused item."""
    began = time.monotonic()
    for first in range(start, count, BATCH_ITEMS):
        last = min(count, first + BATCH_ITEMS)
        items = [(key_name(i), f"{i:016d}".encode()) for i in range(first, last)]
        status, frames = s3.batch_put(bucket, items)
        if status != 200 or any(f.status is not wire.Status.OK for f in frames):
            raise RuntimeError(f"batch put at {first}: HTTP {status}")
    return time.monotonic() - began


@dataclass(frozen=True, slots=True)
class ListingRun:
    keys: int
    pages: int
    in_order: bool  # every key once, in the order written (UTF-8 byte order)
    rss_before_bytes: int
    rss_max_bytes: int
    seconds: float

    @property
    def rss_growth_bytes(self) -> int:
        return self.rss_max_bytes - self.rss_before_bytes


def page_all(s3: S3Raw, bucket: str, pid: int, expected: int, max_keys: int = 1000,
             sample_every_pages: int = 1) -> ListingRun:
    """List the whole bucket with ListObjectsV2 pages of `max_keys`, reading the
    gateway's RSS every `sample_every_pages` pages."""
    rss_before = rss_max = rss_bytes(pid)
    began = time.monotonic()
    token: str | None = None
    pages = count = 0
    in_order = True
    while True:
        page = s3.list_page(bucket, token=token, max_keys=max_keys)
        for key in page.keys:
            if count >= expected or key != key_name(count):
                in_order = False
            count += 1
        pages += 1
        if pages % sample_every_pages == 0:
            rss_max = max(rss_max, rss_bytes(pid))
        if page.next_token is None:
            break
        token = page.next_token
    rss_max = max(rss_max, rss_bytes(pid))
    return ListingRun(count, pages, in_order and count == expected, rss_before, rss_max,
                      time.monotonic() - began)
