"""`petrel://` for fsspec: petrel objects through any fsspec-aware library.

Registered through the `fsspec.specs` entry point (pyproject.toml), so

    fsspec.open("petrel://bucket/key").open().read()
    fs = fsspec.filesystem("petrel", conf_path="~/petreloss.conf", cluster="local")
    fs.cat(["bucket/a", "bucket/b"])          # one batch request
    fs.cat_ranges(["bucket/a"], [0], [100])   # one batch request, ranges
    fs.pipe({"bucket/a": b"...", "bucket/b": b"..."})  # one batch put

Paths are `bucket/key` (with or without `petrel://`); storage options `conf_path`
(default `~/petreloss.conf`), `cluster` (default: the file's `default_cluster`) and
`batch_size` (items per batch request, default and at most 1000). Every
call goes through `petrel.Client`: `cat` of many paths and `cat_ranges` are batch gets,
`pipe` of many paths a batch put. Files open for reading (ranged reads, fsspec's
read-ahead cache) and writing (`wb`: buffered in memory, stored with one PUT at close).
A missing object raises FileNotFoundError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem  # type: ignore[import-untyped]

from petrel.client import BATCH_SIZE_MAX, Client
from petrel.errors import InvalidRange, NoSuchBucket, NoSuchKey, PetrelError

Info = dict[str, Any]


class PetrelFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    protocol = ("petrel",)
    root_marker = ""

    def __init__(self, conf_path: str | None = None, cluster: str | None = None,
                 batch_size: int = BATCH_SIZE_MAX, **storage_options: Any) -> None:
        super().__init__(conf_path=conf_path, cluster=cluster, batch_size=batch_size,
                         **storage_options)
        self.conf_path = conf_path
        self.cluster = cluster
        self.batch_size = batch_size
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """Made on first use; `petrel.Client` itself is safe across fork and threads."""
        if self._client is None:
            self._client = Client(self.conf_path, batch_size=self.batch_size)
        return self._client

    def url(self, path: str) -> str:
        """The petrel client URL of an fsspec path: `[cluster:]s3://bucket/key`."""
        stripped: str = self._strip_protocol(path)
        prefix = f"{self.cluster}:s3://" if self.cluster else "s3://"
        return prefix + stripped

    # ----- reading -------------------------------------------------------------------------
    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        result = self._get_many([path], [start], [end])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def cat_ranges(self, paths: list[str], starts: int | list[int | None] | None,
                   ends: int | list[int | None] | None, max_gap: int | None = None,
                   on_error: str = "return", **kwargs: Any) -> list[bytes | Exception]:
        """Byte ranges [start, end) of many files with one batch request per 1000."""
        if max_gap is not None:
            raise NotImplementedError("max_gap: the gateway merges neighbouring reads itself")
        starts_list = starts if isinstance(starts, list) else [starts] * len(paths)
        ends_list = ends if isinstance(ends, list) else [ends] * len(paths)
        if not len(paths) == len(starts_list) == len(ends_list):
            raise ValueError("paths, starts and ends differ in length")
        results = self._get_many(paths, starts_list, ends_list)
        if on_error != "return":
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def cat(self, path: str | list[str], recursive: bool = False, on_error: str = "raise",
            **kwargs: Any) -> bytes | dict[str, bytes | Exception]:
        """One path: its bytes. Many paths (a list, a glob, `recursive`): {path: bytes},
        read with batch requests; on_error "raise", "omit" or "return" as in fsspec."""
        if recursive:
            roots = path if isinstance(path, list) else [path]
            paths = sorted({name for root in roots for name in self.find(root)})
        else:
            paths = self.expand_path(path)
            if len(paths) == 1 and not isinstance(path, list) and \
                    paths[0] == self._strip_protocol(path):
                return self.cat_file(paths[0])
        out: dict[str, bytes | Exception] = {}
        for name, result in zip(paths, self._get_many(paths), strict=True):
            if isinstance(result, Exception):
                if on_error == "raise":
                    raise result
                if on_error == "omit":
                    continue
            out[name] = result
        return out

    def _get_many(self, paths: Sequence[str], starts: Sequence[int | None] | None = None,
                  ends: Sequence[int | None] | None = None) -> list[bytes | Exception]:
        """Fetch whole objects or ranges [start, end) with the batch API; per path the
        bytes or the error (FileNotFoundError for a missing object)."""
        urls = [self.url(p) for p in paths]
        ranges: list[tuple[int, int | None] | None] | None = None
        empty: set[int] = set()
        if starts is not None and ends is not None and any(
                s is not None or e is not None for s, e in zip(starts, ends, strict=True)):
            ranges = []
            for i, (url, start, end) in enumerate(zip(urls, starts, ends, strict=True)):
                byte_range = self._range(url, start, end)
                if byte_range is not None and byte_range[1] == 0:
                    empty.add(i)
                ranges.append(byte_range)
        wanted = [i for i in range(len(urls)) if i not in empty]
        fetched = self.client.fetch_batch(
            [urls[i] for i in wanted], None if ranges is None else [ranges[i] for i in wanted])
        results: list[bytes | Exception] = [b""] * len(urls)
        for i, result in zip(wanted, fetched, strict=True):
            results[i] = _result(paths[i], result)
        return results

    def _range(self, url: str, start: int | None, end: int | None
               ) -> tuple[int, int | None] | None:
        """fsspec's [start, end) (negative: from the end) as (start, length or None)."""
        if start is None and end is None:
            return None
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.client.size(url)
            start = max(size + start, 0) if start is not None and start < 0 else start
            end = max(size + end, 0) if end is not None and end < 0 else end
        first = start or 0
        return (first, None) if end is None else (first, max(end - first, 0))

    # ----- metadata ------------------------------------------------------------------------
    def info(self, path: str, **kwargs: Any) -> Info:
        name = self._strip_protocol(path)
        bucket, _, key = name.partition("/")
        if not bucket:
            return {"name": "", "size": 0, "type": "directory"}
        if key:
            try:
                return {"name": name, "size": self.client.size(self.url(name)), "type": "file"}
            except (NoSuchKey, NoSuchBucket):
                pass
            if self.client.isdir(self.url(name)):
                return {"name": name, "size": 0, "type": "directory"}
        elif f"{bucket}/" in set(self.client.list(self.url(""))):
            return {"name": bucket, "size": 0, "type": "directory"}
        raise FileNotFoundError(name)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Info] | list[str]:
        """One level. Names come from a delimiter listing; with `detail`, sizes come from
        a recursive listing of the directory folded to one level (the client has no
        public listing with both)."""
        name = self._strip_protocol(path)
        base = name + "/" if name else ""
        try:
            names = list(self.client.list(self.url(name)))
        except NoSuchBucket:
            raise FileNotFoundError(name) from None
        if not names:
            if name and self.isfile(name):
                return [self.info(name)] if detail else [name]
            if name and not self.exists(name):
                raise FileNotFoundError(name)
        if not detail:
            return [base + n.rstrip("/") for n in names]
        return self._ls_detail(name, base, names)

    def _ls_detail(self, name: str, base: str, names: list[str]) -> list[Info]:
        dirs = [{"name": base + n.rstrip("/"), "size": 0, "type": "directory"}
                for n in names if n.endswith("/")]
        if not name:  # the buckets
            return dirs
        files: list[Info] = []
        wanted = {base + n for n in names if not n.endswith("/")}
        for path, entry in self._iter_objects(base):
            if path in wanted:
                files.append({"name": path, "size": int(entry.get("Size", 0)), "type": "file",
                              "ETag": entry.get("ETag"), "LastModified": entry.get("LastModified")})
        return dirs + files

    def _iter_objects(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self.client.get_file_iterator(self.url(prefix))

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        """Every object under `path`, with one recursive listing (maxdepth and withdirs
        fall back to fsspec's walk)."""
        name = self._strip_protocol(path)
        if maxdepth is not None or withdirs or not name:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail,
                                **kwargs)
        found: dict[str, Info] = {}
        base = name.rstrip("/") + "/"
        for key, entry in self._iter_objects(base):
            found[key] = {"name": key, "size": int(entry.get("Size", 0)), "type": "file"}
        if not found and self.isfile(name):
            found[name] = self.info(name)
        return found if detail else sorted(found)

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def modified(self, path: str) -> Any:
        raise NotImplementedError("petrel: use info()/ls(detail=True) for LastModified")

    # ----- writing -------------------------------------------------------------------------
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        self.client.put(self.url(path), value)

    def pipe(self, path: str | dict[str, bytes], value: bytes | None = None,
             **kwargs: Any) -> None:
        """One object, or {path: bytes} stored with batch puts."""
        if isinstance(path, str):
            if value is None:
                raise ValueError("pipe(path) needs a value")
            self.pipe_file(path, value)
            return
        self.client.put_batch([(self.url(p), data) for p, data in path.items()])

    def rm_file(self, path: str) -> None:
        self.client.delete(self.url(path))

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: str | list[str], recursive: bool = False,
           maxdepth: int | None = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for name in reversed(paths):
            if self._strip_protocol(name).count("/") >= 1:  # never a bucket
                self.rm_file(name)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Directories are key prefixes: nothing to make (buckets: `petrel` CLI)."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """As mkdir."""

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> PetrelFile:
        return PetrelFile(self, path, mode, block_size or "default", autocommit,
                          cache_options=cache_options, **kwargs)


class PetrelFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """Reads with ranged batch gets; writes buffer the whole object, stored at close."""

    fs: PetrelFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self.fs.cat_file(self.path, start, end)

    def _initiate_upload(self) -> None:
        """Nothing: the object is stored whole by the final flush."""

    def _upload_chunk(self, final: bool = False) -> bool:
        if not final:
            return False  # keep buffering: S3 objects are written whole
        self.buffer.seek(0)
        self.fs.client.put(self.fs.url(self.path), self.buffer.read())
        return True


def _result(path: str, result: bytes | PetrelError | None) -> bytes | Exception:
    if result is None:
        return FileNotFoundError(path)
    if isinstance(result, InvalidRange):
        return b""  # fsspec reads past the end as empty
    if isinstance(result, NoSuchKey | NoSuchBucket):
        return FileNotFoundError(path)
    return result
