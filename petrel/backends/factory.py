"""Building the backend a `StoreConfig` names (the store, `petrel fsck` and tools)."""

from __future__ import annotations

import os

from petrel.backends.base import Backend
from petrel.settings import StoreConfig


def open_backend(config: StoreConfig) -> Backend:
    """The local directory ``<data_dir>/blobs`` when `config.backend` is None, else the
    S3 store it describes (botocore is imported only then), with reads of segments
    through an on-disk cache under ``<data_dir>/cache`` unless read_cache_bytes_max is 0."""
    if config.backend is None:
        from petrel.backends.local import LocalBackend

        return LocalBackend(os.path.join(config.data_dir, "blobs"),
                            open_files_max=config.open_files_max)
    from petrel.backends.s3 import S3Backend

    remote = S3Backend(config.backend, threads=config.io_threads)
    if not config.read_cache_bytes_max:
        return remote
    from petrel.backends.cache import CachedBackend

    return CachedBackend(remote, os.path.join(config.data_dir, "cache"),
                         bytes_max=config.read_cache_bytes_max,
                         block_bytes=config.read_cache_block_bytes)
