"""The backend protocol: a handful of blob operations, each with a written contract.

A backend stores immutable *blobs* under names such as ``segments/000000000000002a.seg``
or ``objects/<id>``. It knows nothing about records, keys or the index. Retries, caching
and read coalescing are written once above this protocol, never inside a backend.

Names are relative paths of ``[A-Za-z0-9._-]`` components separated by ``/``; no empty
component, no ``.`` or ``..``. `check_blob_name` enforces it for every backend.

All methods are synchronous and thread-safe: the store calls them from worker threads,
or inline on the event loop when `reads_are_local` says a read costs no more than a
local ``pread``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from petrel.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def check_blob_name(name: str) -> str:
    """Return `name` if it is a valid blob name, else raise InvalidArgument."""
    if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
        raise InvalidArgument(f"invalid blob name {name!r}")
    return name


@runtime_checkable
class Backend(Protocol):
    """Immutable blobs over byte ranges."""

    @property
    def reads_are_local(self) -> bool:
        """True when `get_range` is a local pread, cheap enough for the event loop."""
        ...

    def put_file(self, name: str, path: str) -> None:
        """Store the bytes of the local file `path` as blob `name`, durably.

        When it returns, the blob survives a crash of this process and of the machine.
        A blob already under `name` is replaced atomically: readers see the old bytes or
        the new, never a mix. On failure (raises BackendError) no partial blob is visible.
        The caller must not modify `path` afterwards (a local backend may hard-link it)
        but may delete it. Idempotent: storing the same bytes twice is not an error.
        """
        ...

    def put_bytes(self, name: str, data: bytes) -> None:
        """As `put_file`, from memory."""
        ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of blob `name` from `offset`.

        Raises BlobNotFound if there is no such blob, InvalidArgument if the range is
        negative or runs past the blob's end, BackendError on I/O failure.
        """
        ...

    def get_file(self, name: str, path: str) -> None:
        """Copy the whole blob `name` into the local file `path` (created or replaced).

        Raises BlobNotFound if there is no such blob, BackendError on I/O failure.
        """
        ...

    def size(self, name: str) -> int:
        """The blob's size in bytes. Raises BlobNotFound if there is no such blob."""
        ...

    def delete(self, name: str) -> None:
        """Remove blob `name`. Idempotent: deleting a missing blob is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names of the blobs whose name starts with `prefix`, in ascending byte order."""
        ...

    def close(self) -> None:
        """Release open files and connections. Idempotent."""
        ...
