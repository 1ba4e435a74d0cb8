"""petrel.index.RocksKV opens an existing index with its own options: rocksdict, given
only the DB options, reads an existing column family's options back from the OPTIONS
file, where the block cache is not recorded, and the index silently ran on RocksDB's
8 MiB default. With ~900k keys in one SST, its index block no longer fit a cache shard
and every lookup cost ~500 us (bench/results/s3-2026-11-24-writelink-notes.md)."""

from __future__ import annotations

from petrel import index as ix

MiB = 1024 * 1024


def test_a_reopened_index_keeps_its_block_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "index")
    created = ix.RocksKV(path, cache_bytes=64 * MiB)
    assert created.block_cache_capacity_bytes() == 64 * MiB
    created.write([(b"k%06d" % i, b"v" * 40) for i in range(1000)])
    created.close()
    reopened = ix.RocksKV(path, cache_bytes=96 * MiB)
    try:
        assert reopened.block_cache_capacity_bytes() == 96 * MiB
        secondary = ix.RocksKV(path, cache_bytes=32 * MiB, secondary=str(tmp_path / "sec"))
        try:
            assert secondary.block_cache_capacity_bytes() == 32 * MiB
            assert secondary.get(b"k000999") == b"v" * 40
        finally:
            secondary.close()
    finally:
        reopened.close()
