"""A backend outage, for real: SeaweedFS is killed (by PID) while the store writes and
reads, then started again on the same ports and data.

While it is down, writes keep being acknowledged from local disk until the upload
backlog reaches its limit, then fail with 503 SlowDown; reads of data only in the
backend fail with 503 and one clear log line. Once it is back, the backlog is uploaded,
writes and reads work again, and every acknowledged object is in the backend: a fresh
data directory rebuilt from the bucket alone serves each one byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from weed import backend_config, start_weed

from petrel import format as fmt
from petrel.backends.cache import CachedBackend
from petrel.backends.s3 import S3Backend
from petrel.errors import BackendError, SlowDown
from petrel.limits import KiB, Limits
from petrel.recovery import rebuild_index, segment_dir
from petrel.segments import list_local_segments
from petrel.settings import StoreConfig
from petrel.store import Store
from petrel.testing.seaweedfs import SeaweedFS

BUCKET = "train"
LIMITS = Limits(segment_bytes_max=256 * KiB, pack_threshold_bytes=16 * KiB)
BACKLOG_BYTES_MAX = 1024 * KiB  # four segments
# Bounds on the loops below (counts and seconds), so a bug fails instead of hanging.
OUTAGE_WRITES_MAX = 2000
RECOVERY_TIMEOUT_S = 60.0


@pytest.fixture
def private_weed(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own: it is killed and restarted."""
    server = start_weed(tmp_path / "weed")
    try:
        yield server
    finally:
        server.kill()


def payload(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(2 * KiB, 10 * KiB))


async def test_backend_outage_during_writes_and_reads(
        tmp_path: Path, private_weed: SeaweedFS, caplog: pytest.LogCaptureFixture) -> None:
    weed = private_weed
    s3 = backend_config(weed, request_attempts_max=2, connect_timeout_s=1.0)
    config = StoreConfig(
        data_dir=str(tmp_path / "data"), limits=LIMITS, backend=s3,
        compaction_enabled=False, upload_backlog_bytes_max=BACKLOG_BYTES_MAX,
        upload_retry_delay_s_min=0.05, upload_retry_delay_s_max=0.5)
    rng = random.Random(7)
    acknowledged: dict[str, bytes] = {}

    async with await Store.open(config) as store:
        await store.create_bucket(BUCKET)
        for i in range(80):
            key, data = f"before/{i:04d}", payload(rng)
            await store.put_object(BUCKET, key, data)
            acknowledged[key] = data
        await store.committer.wait_for_seals()
        remote_only = [k for k in acknowledged if store.locate_object(
            BUCKET, k).entry.location.segment_id not in store.committer.local]
        assert len(remote_only) > 20
        # Read once before the outage: their segment's blocks are in the read cache.
        # (A 1 MiB block holds a whole 256 KiB segment: keep the segments apart.)
        def segment_of(key: str) -> int:
            return store.locate_object(BUCKET, key).entry.location.segment_id

        uncached = [k for k in remote_only if segment_of(k) == segment_of(remote_only[0])]
        cached = [k for k in remote_only if segment_of(k) != segment_of(remote_only[0])]
        for key in cached:
            assert (await store.get_object(BUCKET, key)).body == acknowledged[key]
        assert isinstance(store.backend, CachedBackend)

        # ----- down: writes go on, from local disk, until the backlog is full -----
        weed.kill()
        caplog.set_level(logging.WARNING)
        refused: SlowDown | None = None
        for i in range(OUTAGE_WRITES_MAX):
            key, data = f"during/{i:04d}", payload(rng)
            try:
                await store.put_object(BUCKET, key, data)
            except SlowDown as exc:
                refused = exc
                break
            acknowledged[key] = data
        assert refused is not None, "the backlog never filled"
        assert refused.status == 503
        during = [k for k in acknowledged if k.startswith("during/")]
        # More than the active segment: sealed segments wait for upload meanwhile.
        assert sum(len(acknowledged[k]) for k in during) > 2 * LIMITS.segment_bytes_max
        assert store.committer.upload_backlog_bytes() >= BACKLOG_BYTES_MAX
        assert store.committer.upload_failures > 0
        for key in during[:: max(1, len(during) // 20)]:  # served from local disk
            assert (await store.get_object(BUCKET, key)).body == acknowledged[key]
        for key in uncached[:3]:
            with pytest.raises(BackendError) as failed:
                await store.get_object(BUCKET, key)
            assert failed.value.status == 503
        for key in cached:  # the read cache answers without the backend
            assert (await store.get_object(BUCKET, key)).body == acknowledged[key]
        outage_logs = [r.getMessage() for r in caplog.records
                       if r.name == "petrel.backends.s3" and r.levelno == logging.ERROR]
        assert len(outage_logs) == 1  # once, not per failed request
        assert "unavailable" in outage_logs[0] and weed.endpoint in outage_logs[0]

        # ----- back: the backlog drains, writes and reads work again ---------------
        weed.start()
        await asyncio.wait_for(store.committer.wait_for_seals(), RECOVERY_TIMEOUT_S)
        assert store.committer.upload_backlog_bytes() < BACKLOG_BYTES_MAX
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        await store.put_object(BUCKET, "after/0", b"accepted again")
        acknowledged["after/0"] = b"accepted again"
        for key in remote_only:
            assert (await store.get_object(BUCKET, key)).body == acknowledged[key]
    # close() sealed and uploaded the last active segment.

    # ----- every acknowledged object is in the backend --------------------------------
    shutil.rmtree(config.data_dir)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    backend = S3Backend(s3)
    try:
        report = rebuild_index(str(fresh), backend)
    finally:
        backend.close()
    assert report.objects == len(acknowledged)
    fresh_config = StoreConfig(data_dir=str(fresh), limits=LIMITS, backend=s3,
                               compaction_enabled=False)
    async with await Store.open(fresh_config) as store:
        for key, data in acknowledged.items():
            assert (await store.get_object(BUCKET, key)).body == data, key


async def test_close_during_an_outage_keeps_the_segment_for_the_next_open(
        tmp_path: Path, private_weed: SeaweedFS) -> None:
    """Closing while the backend is down gives up on the last upload after
    close_upload_timeout_s; the sealed segment stays local and the next open uploads it."""
    weed = private_weed
    s3 = backend_config(weed, request_attempts_max=1, connect_timeout_s=1.0)
    config = StoreConfig(data_dir=str(tmp_path / "data"), limits=LIMITS, backend=s3,
                         compaction_enabled=False, close_upload_timeout_s=0.5,
                         upload_retry_delay_s_min=0.05, upload_retry_delay_s_max=0.2)
    async with await Store.open(config) as store:
        await store.create_bucket(BUCKET)
        await store.put_object(BUCKET, "k", b"written before the outage")
        weed.kill()
        started = time.monotonic()
    assert time.monotonic() - started < 10.0
    left = list_local_segments(segment_dir(config.data_dir))
    assert len(left) == 1
    weed.start()
    async with await Store.open(config) as store:
        await asyncio.wait_for(store.committer.wait_for_seals(), RECOVERY_TIMEOUT_S)
        assert list(store.backend.list("segments/")) == [fmt.segment_blob_name(left[0])]
        assert store.committer.local == {}
        assert list_local_segments(segment_dir(config.data_dir)) == []
        assert (await store.get_object(BUCKET, "k")).body == b"written before the outage"
