"""The local-directory backend: blobs are files under a root directory.

Writes go to a temporary name in ``<root>/.tmp`` and are renamed into place after an
fsync, and the parent directory is fsynced, so a blob is either whole or absent after a
crash. `put_file` hard-links when source and root share a filesystem (zero copy for the
segments the store seals), and copies otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from petrel.backends.base import check_blob_name
from petrel.errors import BackendError, BlobNotFound, InvalidArgument

_TMP_DIR = ".tmp"
# What opening or stat-ing a name that is not a blob raises: no such file, a path through
# a blob ("a/b" when "a" is a blob), or a directory ("a" when only "a/b" is a blob).
_NOT_A_BLOB = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """Blobs as files under `root`. Open read handles are cached, at most
    `open_files_max` at a time (least recently used closed first)."""

    def __init__(self, root: str, *, open_files_max: int = 256) -> None:
        if open_files_max < 1:
            raise ValueError("open_files_max must be >= 1")
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, _TMP_DIR)
        os.makedirs(self._tmp, exist_ok=True)
        self._open_files_max = open_files_max
        # File objects, not raw fds: a reader holding a reference keeps its fd open even
        # if the cache evicts it meanwhile, so an fd is never closed under a pread.
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        # Bumped by every replace or delete: a handle opened while it changed may be of
        # the old file, so `_open` uses it for its own read but does not cache it.
        self._invalidations = 0
        self._lock = threading.Lock()

    @property
    def reads_are_local(self) -> bool:
        return True

    # ----- paths -------------------------------------------------------------------
    def _path(self, name: str) -> str:
        check_blob_name(name)
        if name.split("/", 1)[0] == _TMP_DIR:
            raise InvalidArgument(f"blob name {name!r} is reserved")
        return os.path.join(self.root, name)

    def _tmp_path(self) -> str:
        return os.path.join(self._tmp, uuid.uuid4().hex)

    def _publish(self, tmp: str, path: str) -> None:
        parent = os.path.dirname(path)
        self._make_dirs(parent)
        os.replace(tmp, path)
        fsync_dir(parent)
        self._forget(path)

    def _make_dirs(self, directory: str) -> None:
        # A new directory's own entry must be fsynced into its parent too, or the blob
        # below it can vanish with it after a machine crash.
        created: list[str] = []
        while not os.path.isdir(directory):
            created.append(directory)
            directory = os.path.dirname(directory)
        for new in reversed(created):
            with contextlib.suppress(FileExistsError):  # made by a concurrent put
                os.mkdir(new)
            fsync_dir(os.path.dirname(new))

    # ----- writes ------------------------------------------------------------------
    def put_file(self, name: str, path: str) -> None:
        target = self._path(name)
        tmp = self._tmp_path()
        try:
            try:
                os.link(path, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(path, tmp)
            # Read-only: a hard link shares the source's mode, which may be 0o444.
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            self._publish(tmp, target)
        except FileNotFoundError as exc:
            raise BackendError(f"put_file source missing: {path}") from exc
        except OSError as exc:
            raise BackendError(f"local backend put {name}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, name: str, data: bytes) -> None:
        target = self._path(name)
        tmp = self._tmp_path()
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._publish(tmp, target)
        except OSError as exc:
            raise BackendError(f"local backend put {name}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ----- reads -------------------------------------------------------------------
    def _open(self, name: str) -> BinaryIO:
        path = self._path(name)
        with self._lock:
            handle = self._files.get(path)
            if handle is not None:
                self._files.move_to_end(path)
                return handle
            invalidations = self._invalidations
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 - cached, closed on evict
        except _NOT_A_BLOB as exc:
            raise BlobNotFound(f"no blob {name}") from exc
        except OSError as exc:
            raise BackendError(f"local backend open {name}: {exc}") from exc
        with self._lock:
            if invalidations != self._invalidations:
                return handle  # maybe the replaced or deleted file: not for later reads
            self._files[path] = handle
            while len(self._files) > self._open_files_max:
                self._files.popitem(last=False)
        return handle

    def _forget(self, path: str) -> None:
        with self._lock:
            self._invalidations += 1
            self._files.pop(path, None)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range {offset}+{length}")
        handle = self._open(name)
        try:
            # Checked against the size first: pread would allocate `length` bytes before
            # finding the end, and a zero-length read past the end returns b"" silently.
            if offset + length > os.fstat(handle.fileno()).st_size:
                raise InvalidArgument(f"range {offset}+{length} runs past the end of {name}")
            data = os.pread(handle.fileno(), length, offset)
        except OSError as exc:
            raise BackendError(f"local backend read {name}: {exc}") from exc
        if len(data) != length:
            raise BackendError(f"local backend read {name}: short read at {offset}+{length}")
        return data

    def get_file(self, name: str, path: str) -> None:
        source = self._path(name)
        try:
            shutil.copyfile(source, path)
        except _NOT_A_BLOB as exc:
            if not os.path.isfile(source):
                raise BlobNotFound(f"no blob {name}") from exc
            raise BackendError(f"local backend get {name}: {exc}") from exc
        except OSError as exc:
            raise BackendError(f"local backend get {name}: {exc}") from exc

    def size(self, name: str) -> int:
        try:
            status = os.stat(self._path(name))
        except _NOT_A_BLOB as exc:
            raise BlobNotFound(f"no blob {name}") from exc
        except OSError as exc:
            raise BackendError(f"local backend size {name}: {exc}") from exc
        if not stat.S_ISREG(status.st_mode):
            raise BlobNotFound(f"no blob {name} (a directory of blobs)")
        return status.st_size

    def path_of(self, name: str) -> str:
        """The file holding blob `name` (local backend only; for mmap and tools)."""
        return self._path(name)

    # ----- delete and list ---------------------------------------------------------
    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
        except _NOT_A_BLOB:
            return
        except OSError as exc:
            raise BackendError(f"local backend delete {name}: {exc}") from exc
        finally:
            # After the unlink, not before: a reader opening in between would cache the
            # doomed file and keep serving it after delete returned.
            self._forget(path)

    def list(self, prefix: str = "") -> Iterator[str]:
        names: list[str] = []
        for directory, subdirs, files in os.walk(self.root):
            relative = os.path.relpath(directory, self.root)
            if relative == _TMP_DIR or relative.startswith(_TMP_DIR + os.sep):
                subdirs[:] = []
                continue
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            names.extend(base + f for f in files if (base + f).startswith(prefix))
        return iter(sorted(names, key=lambda n: n.encode()))

    def close(self) -> None:
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for handle in files:
            handle.close()
