"""What `petrel pack` reads: a directory tree, one tar file, or WebDataset shards, as a
stream of (key relative to the destination prefix, bytes) in a fixed order.

Key layout (docs/cli.md):

- a directory: each regular file at its relative path (`train/0001.jpg`), walked in
  sorted order; symbolic links to files are followed, links to directories are not;
- a tar file (`.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz`, or anything tarfile opens):
  each regular member at its name (a leading `./` or `/` dropped), in archive order;
- WebDataset shards (several tar files, or `--source shards DIR` for the tar files under
  a directory): each member under the shard's name without its extension,
  `<shard>/<member>` (`shard-000001/000123.jpg`), shards in sorted order. Keeping the
  shard in the key keeps samples of different shards from colliding.

Archives are read as streams (`r|*`): memory is bounded by one member, and a member is
read only when its turn comes.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

SOURCE_KINDS = ("auto", "dir", "tar", "shards")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class SourceError(ValueError):
    """The source does not exist or is not what --source says (a usage error)."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # relative to the destination prefix
    data: bytes
    # How far through the whole source (bytes of files or archives) reading has got.
    position_bytes: int


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # "dir", "tar" or "shards"
    paths: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.kind}:{','.join(self.paths)}"

    def total_bytes(self) -> int:
        """Bytes `position_bytes` counts up to (walks a directory tree)."""
        if self.kind == "dir":
            return sum(size for _, _, size in walk_files(self.paths[0]))
        return sum(os.path.getsize(path) for path in self.paths)

    def total_files(self) -> int | None:
        """Files in a directory tree; None for archives (unknown until read)."""
        if self.kind == "dir":
            return sum(1 for _ in walk_files(self.paths[0]))
        return None

    def entries(self) -> Iterator[Entry]:
        if self.kind == "dir":
            yield from _dir_entries(self.paths[0])
        elif self.kind == "tar":
            yield from _tar_entries(self.paths[0], "", 0)
        else:
            yield from _shard_entries(self.paths)


def is_tar_name(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def resolve_source(paths: Sequence[str], kind: str = "auto") -> Source:
    """Decide what the SRC arguments are. Raises SourceError."""
    if not paths:
        raise SourceError("no source given")
    for path in paths:
        if not os.path.exists(path):
            raise SourceError(f"source {path!r} does not exist")
    if kind == "auto":
        kind = _guess_kind(paths)
    if kind == "dir":
        if len(paths) != 1 or not os.path.isdir(paths[0]):
            raise SourceError("--source dir takes exactly one directory")
        return Source("dir", (paths[0],))
    if kind == "tar":
        if len(paths) != 1 or not os.path.isfile(paths[0]):
            raise SourceError("--source tar takes exactly one tar file (several are shards)")
        return Source("tar", (paths[0],))
    if kind == "shards":
        return Source("shards", tuple(_shard_paths(paths)))
    raise SourceError(f"unknown source kind {kind!r} (one of {', '.join(SOURCE_KINDS)})")


def _guess_kind(paths: Sequence[str]) -> str:
    if len(paths) > 1:
        return "shards"
    path = paths[0]
    if os.path.isdir(path):
        return "dir"
    if is_tar_name(path) or tarfile.is_tarfile(path):
        return "tar"
    raise SourceError(f"{path!r} is neither a directory nor a tar file")


def _shard_paths(paths: Sequence[str]) -> list[str]:
    shards: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, rel) for rel, _, _ in walk_files(path)
                           if is_tar_name(rel))
            if not found:
                raise SourceError(f"no tar shards under {path!r}")
            shards += found
        elif os.path.isfile(path):
            shards.append(path)
        else:
            raise SourceError(f"shard {path!r} is not a file")
    names = [shard_name(path) for path in shards]
    if len(set(names)) != len(names):
        raise SourceError("two shards have the same name; their members would collide")
    return shards


def shard_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in sorted(TAR_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def walk_files(root: str) -> Iterator[tuple[str, str, int]]:
    """(path relative to root with '/', absolute path, size) of every regular file,
    sorted, without following links to directories."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue  # a dangling link or a file removed since the walk
            if stat.S_ISREG(info.st_mode):
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                yield rel, path, info.st_size


def _dir_entries(root: str) -> Iterator[Entry]:
    position = 0
    for rel, path, size in walk_files(root):
        with open(path, "rb") as handle:
            data = handle.read()
        position += size
        yield Entry(rel, data, position)


class _Counting:
    """A read-only file that counts how far it has been read (the archive position)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.position += len(data)
        return data


def _tar_entries(path: str, key_prefix: str, base_position: int) -> Iterator[Entry]:
    with open(path, "rb") as raw:
        counting = _Counting(raw)
        try:
            # Closed by the `with archive` below (opening is what may fail here).
            archive = tarfile.open(  # noqa: SIM115
                fileobj=counting, mode="r|*")  # type: ignore[call-overload]
        except tarfile.TarError as exc:
            raise SourceError(f"{path!r} is not a readable tar file: {exc}") from None
        with archive:
            for member in archive:
                if not member.isreg():
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                data = handle.read()
                name = member_key(member.name)
                if name:
                    yield Entry(key_prefix + name, data, base_position + counting.position)


def member_key(name: str) -> str:
    """A member name as a key: '/' separators, no leading './' or '/', no '.' parts."""
    cleaned = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    return "" if cleaned in ("", ".") else cleaned


def _shard_entries(paths: Sequence[str]) -> Iterator[Entry]:
    position = 0
    for path in paths:
        yield from _tar_entries(path, shard_name(path) + "/", position)
        position += os.path.getsize(path)
