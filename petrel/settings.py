"""Engine configuration: policy knobs beside the hard `Limits`, in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from petrel.limits import Limits, MiB


class Durability(StrEnum):
    """When a write is acknowledged.

    ALWAYS: fsync before the reply; a commit starts as soon as a writer arrives.
    BATCH:  group commit: writers arriving within `commit_window_ms` share one fsync;
            the reply still waits for it (the default).
    NONE:   written to the page cache only; a machine crash may lose acknowledged
            writes (a process crash does not). For scratch data.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    data_dir: str
    durability: Durability = Durability.BATCH
    limits: Limits = field(default_factory=Limits)
    # Group commit: how long a commit waits for more writers once one has arrived
    # (BATCH only), and how many records one commit takes at most.
    commit_window_ms: float = 0.5
    commit_records_max: int = 4096
    # Seal the active segment when it has received no write for this long, so it is
    # uploaded to a remote backend (bounds what a lost local disk can lose).
    seal_idle_s: float = 300.0
    # Compaction: rewrite a sealed segment once this fraction of it is dead, copying at
    # most `compaction_bytes_per_s`; check every `compaction_interval_s`.
    compaction_dead_fraction: float = 0.5
    compaction_bytes_per_s: int = 64 * MiB
    compaction_interval_s: float = 10.0
    compaction_enabled: bool = True
    # A compacted segment is deleted this long after the switch, so a reader that
    # looked up its old location just before still finds it.
    compaction_delete_grace_s: float = 30.0
    # Batch reads: neighbouring records closer than this are read in one request, and
    # one merged read is at most `read_merge_bytes_max`.
    read_merge_gap_bytes: int = 64 * 1024
    read_merge_bytes_max: int = 8 * MiB
    # Open segment files kept by the local backend.
    open_files_max: int = 256
    # RocksDB block cache for the index (data, index and bloom-filter blocks).
    index_cache_bytes: int = 256 * MiB
    # Worker threads for blocking backend I/O (uploads, remote reads).
    io_threads: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.compaction_dead_fraction <= 1.0:
            raise ValueError("compaction_dead_fraction must be in (0, 1]")
        if self.commit_window_ms < 0 or self.commit_records_max < 1:
            raise ValueError("commit_window_ms must be >= 0 and commit_records_max >= 1")
        if self.compaction_bytes_per_s < 64 * 1024:
            raise ValueError("compaction_bytes_per_s must be at least 64 KiB/s")
        if self.io_threads < 1 or self.open_files_max < 1:
            raise ValueError("io_threads and open_files_max must be >= 1")
