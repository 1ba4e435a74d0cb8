"""Shared fixtures: a store on a temporary directory, with limits small enough that
segments roll, seal and compact within a test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from petrel.limits import KiB, Limits
from petrel.settings import StoreConfig
from petrel.store import Store

SMALL_LIMITS = Limits(segment_bytes_max=256 * KiB, pack_threshold_bytes=16 * KiB)


@pytest.fixture
def small_config(tmp_path) -> StoreConfig:  # type: ignore[no-untyped-def]
    return StoreConfig(data_dir=str(tmp_path / "data"), limits=SMALL_LIMITS,
                       compaction_interval_s=3600, compaction_delete_grace_s=0)


@pytest.fixture
async def store(small_config: StoreConfig) -> AsyncIterator[Store]:
    opened = await Store.open(small_config)
    try:
        yield opened
    finally:
        await opened.close()
