"""Engine configuration: policy knobs beside the hard `Limits`, in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from petrel.limits import GiB, Limits, MiB


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
class S3BackendConfig:
    """Where an S3 backend keeps its blobs, and how it talks to the store.

    Blob `name` is stored under key `prefix + name` in `bucket`. `endpoint_url` None
    means AWS (the region's endpoint). Credentials None fall back to the AWS SDK's own
    chain (environment, shared files, instance roles).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # Path-style URLs (http://host/bucket/key): what SeaweedFS, MinIO and most
    # self-hosted stores expect; virtual-hosted style (http://bucket.host/key) is AWS's.
    path_style: bool = False
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    # Blobs larger than this are uploaded in parts of `multipart_part_bytes` (S3: parts
    # of 5 MiB..5 GiB, at most 10000 of them); one part is held in memory at a time.
    multipart_threshold_bytes: int = 64 * MiB
    multipart_part_bytes: int = 16 * MiB
    # HTTP connections kept to the store; raised to the store's io_threads if lower.
    connections_max: int = 16
    # One request is tried at most this often (connection errors, 5xx, SlowDown), with
    # exponential backoff and jitter in between; then the operation fails.
    request_attempts_max: int = 4
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    # Compare the ETag the store returns with the MD5 computed here. Stores that do not
    # return MD5 ETags (AWS with SSE-KMS) need it off; sizes are checked regardless.
    verify_etag: bool = True

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ValueError(f"invalid S3 bucket name {self.bucket!r}")
        if self.prefix.startswith("/") or "//" in self.prefix:
            raise ValueError(f"invalid S3 key prefix {self.prefix!r}")
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("S3 access key and secret key must be given together")
        if not 5 * MiB <= self.multipart_part_bytes <= 5 * GiB:
            raise ValueError("multipart_part_bytes must be in [5 MiB, 5 GiB] (S3's bounds)")
        if self.multipart_threshold_bytes < 1 or self.multipart_threshold_bytes > 5 * GiB:
            raise ValueError("multipart_threshold_bytes must be in [1, 5 GiB]")
        if self.connections_max < 1 or self.request_attempts_max < 1:
            raise ValueError("connections_max and request_attempts_max must be >= 1")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("S3 timeouts must be > 0")

    @property
    def key_prefix(self) -> str:
        """`prefix` with exactly one trailing slash ("" for none)."""
        return self.prefix.rstrip("/") + "/" if self.prefix.strip("/") else ""

    @classmethod
    def from_url(cls, url: str, **settings: object) -> S3BackendConfig:
        """From ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``; raises ValueError."""
        scheme, sep, rest = url.partition("://")
        if scheme != "s3" or not sep:
            raise ValueError(f"backend URL must look like s3://BUCKET/PREFIX, got {url!r}")
        bucket, _, prefix = rest.partition("/")
        return cls(bucket=bucket, prefix=prefix, **settings)  # type: ignore[arg-type]


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
    # Seal segments in a process of their own (petrel/commit.py: a seal in a thread
    # stalls the event loop on the GIL). False seals in the I/O threads.
    seal_process: bool = True
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
    # Where sealed segments and large objects go: None for a local directory under
    # data_dir (`blobs/`), or an S3 store.
    backend: S3BackendConfig | None = None
    # On-disk LRU cache of sealed segments' bytes read from a remote backend (under
    # data_dir/cache, emptied on open), in blocks of `read_cache_block_bytes`: a miss
    # reads whole blocks. 0 turns it off; a local-directory backend never uses it.
    # 4 MiB blocks: a cold pass over a dataset (what training does) fetches a segment
    # in a quarter of the GETs 1 MiB blocks take (bench/results/backend-*: cold batch
    # get 14.4k -> 20.3k objects/s); a cold random read of one small object fetches 4 MiB.
    read_cache_bytes_max: int = 8 * GiB
    read_cache_block_bytes: int = 4 * MiB
    # Bytes of segments on local disk that are not yet in the backend (the active
    # segment, and sealed ones waiting for their upload). Past it, writes fail with
    # 503 SlowDown until uploads catch up: what a backend outage may pile up locally.
    upload_backlog_bytes_max: int = 4 * GiB
    # A failed upload is retried after a delay doubling from min to max, for ever; the
    # local copy stays until an upload is verified.
    upload_retry_delay_s_min: float = 0.1
    upload_retry_delay_s_max: float = 30.0
    # On close, how long uploads of the last segments are retried before the store
    # stops anyway (they stay on local disk and are uploaded by the next open).
    close_upload_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 < self.compaction_dead_fraction <= 1.0:
            raise ValueError("compaction_dead_fraction must be in (0, 1]")
        if self.seal_idle_s <= 0:
            raise ValueError("seal_idle_s must be > 0")
        if self.commit_window_ms < 0 or self.commit_records_max < 1:
            raise ValueError("commit_window_ms must be >= 0 and commit_records_max >= 1")
        if self.compaction_bytes_per_s < 64 * 1024:
            raise ValueError("compaction_bytes_per_s must be at least 64 KiB/s")
        if self.io_threads < 1 or self.open_files_max < 1:
            raise ValueError("io_threads and open_files_max must be >= 1")
        if self.upload_backlog_bytes_max < 2 * self.limits.segment_bytes_max:
            # The active segment and one being uploaded must fit, or writes would be
            # refused in normal operation.
            raise ValueError("upload_backlog_bytes_max must be >= 2 * segment_bytes_max")
        if self.read_cache_bytes_max and not (
                4096 <= self.read_cache_block_bytes <= self.read_cache_bytes_max):
            raise ValueError("read_cache_block_bytes must be in [4096, read_cache_bytes_max]")
        if not 0 < self.upload_retry_delay_s_min <= self.upload_retry_delay_s_max:
            raise ValueError("upload retry delays must satisfy 0 < min <= max")
        if self.close_upload_timeout_s < 0:
            raise ValueError("close_upload_timeout_s must be >= 0")
