"""PyTorch datasets over petrel objects. The only petrel module that imports torch.

- `Dataset`: map-style over a list of URLs, a prefix (listed once) or a manifest object
  (petrel/manifest.py). `__getitems__` makes each DataLoader batch one batch get, and a
  pre-read cache (petrel/prefetch.py) fetches this worker's next batches while it decodes
  the current one, when the dataset knows the sampler's order (`order=`; sequential by
  default).
- `IterableDataset`: splits the URLs by rank and worker, shuffles per epoch with a seed
  (`set_epoch`), and reads its share in batches through the pre-read cache.
- `EpochSampler`: a seeded, per-epoch shuffle whose order every process can recompute.

Both datasets make their client lazily in each process (from `conf_path`), or use the
one given (`petrel.Client` is fork-safe), so `DataLoader(num_workers=N)` works with fork
and spawn. docs/loader.md has the recipes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import torch
import torch.distributed
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset as TorchIterableDataset
from torch.utils.data import Sampler, get_worker_info

from petrel import manifest
from petrel.client import BATCH_SIZE_MAX, Client, parse_url
from petrel.errors import NoSuchKey
from petrel.prefetch import PrefetchCache, PrefetchSettings, PrefetchStats

Decode = Callable[[bytes], Any]


def _identity(data: bytes) -> bytes:
    return data


# ----- sources -----------------------------------------------------------------------------
def list_prefix(client: Client, url: str) -> list[str]:
    """URLs of every object whose key starts with `url`'s key (all levels), in key order."""
    cluster, _, _ = parse_url(url)
    scheme = f"{cluster}:s3://" if cluster else "s3://"
    return [scheme + path for path, _ in client.get_file_iterator(url)]


def read_manifest(client: Client, url: str) -> list[str]:
    """URLs of the objects a manifest object lists (keys relative to its bucket)."""
    data = client.get(url)
    if data is None:
        raise NoSuchKey(f"manifest {url!r} does not exist", resource=url)
    cluster, bucket, _ = parse_url(url)
    parsed = manifest.decode(bytes(data))
    # `petrel pack --manifest` may store the manifest in another bucket than the objects:
    # it then names theirs in the header ("bucket": "s3://name/").
    named = parsed.meta.get("bucket")
    if isinstance(named, str) and named.startswith("s3://"):
        bucket = parse_url(named)[1] or bucket
    base = f"{cluster}:s3://{bucket}/" if cluster else f"s3://{bucket}/"
    return [base + key for key in parsed.keys]


# Per process: every DataLoader worker has its own cache. The LRU part only pays off with
# persistent workers, so the default is half the cache's own.
DATASET_PREFETCH = PrefetchSettings(cache_bytes_max=256 * 1024 * 1024,
                                    lookahead_bytes_max=128 * 1024 * 1024)


def _make_client(conf_path: str | None) -> Client:
    # One request per DataLoader batch up to the gateway's 1000 items.
    return Client(conf_path, batch_size=BATCH_SIZE_MAX)


# ----- the sampler -------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """Indices 0..length-1, shuffled per epoch from `seed` (or in order). Every process
    computes the same order for the same (seed, epoch), which lets a worker's dataset
    know the batches it will be asked for. Call `set_epoch` before each epoch."""

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0) -> None:
        if length < 0:
            raise ValueError(f"length={length} < 0")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> list[int]:
        return permutation(self.length, self.seed, self.epoch if epoch is None else epoch,
                           shuffle=self.shuffle)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.length


def permutation(length: int, seed: int, epoch: int, *, shuffle: bool = True) -> list[int]:
    """range(length), shuffled by (seed, epoch) when `shuffle`: the same on every process."""
    if not shuffle:
        return list(range(length))
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    order: list[int] = torch.randperm(length, generator=generator).tolist()
    return order


# ----- map-style ---------------------------------------------------------------------------
@dataclass(slots=True)
class _WorkerState:
    """What a dataset holds in one process: never shared across fork."""

    pid: int
    client: Client
    cache: PrefetchCache
    order: list[int] = field(default_factory=list)
    order_epoch: int | None = None  # -1: an order without epochs
    sampler_epoch: int | None = None
    tried_epoch: int | None = None
    position: dict[int, int] = field(default_factory=dict)
    batch_size: int = 0
    next_batch: int | None = None


class _FromSources:
    """Constructors shared by both datasets: from a prefix or a manifest object."""

    def __init__(self, urls: Sequence[str], decode: Decode | None = None, *,
                 client: Client | None = None, conf_path: str | None = None,
                 **kwargs: Any) -> None:
        raise NotImplementedError  # the dataset classes define it

    @classmethod
    def from_prefix(cls, url: str, decode: Decode | None = None, *,
                    client: Client | None = None, conf_path: str | None = None,
                    **kwargs: Any) -> Self:
        """Every object under `url` (listed once, here), in key order."""
        lister = client or _make_client(conf_path)
        return cls(list_prefix(lister, url), decode, client=client, conf_path=conf_path,
                   **kwargs)

    @classmethod
    def from_manifest(cls, url: str, decode: Decode | None = None, *,
                      client: Client | None = None, conf_path: str | None = None,
                      **kwargs: Any) -> Self:
        """The objects a manifest object lists, in its order (docs/loader.md)."""
        reader = client or _make_client(conf_path)
        return cls(read_manifest(reader, url), decode, client=client, conf_path=conf_path,
                   **kwargs)


class Dataset(_FromSources, TorchDataset[Any]):
    """Map-style dataset over petrel URLs (`[cluster:]s3://bucket/key`).

    `decode(bytes)` makes a sample (default: the bytes). `order` is the sampler the
    DataLoader uses (an `EpochSampler`, or any iterable of indices that is the same in
    every process; default: sequential): when a batch asked for is a batch of that order,
    the worker plans its next batches (every `num_workers`-th, as the DataLoader hands
    them out) and the pre-read cache fetches them ahead, one batch request each. When a
    batch is not where the plan expects it (a random sampler, persistent workers after
    an epoch), it is one batch request read directly: slower, never wrong.
    `batch_size` defaults to the size of the first batch asked for.

    Raises NoSuchKey for a missing object and the client's error for a failed one.
    """

    def __init__(self, urls: Sequence[str], decode: Decode | None = None, *,
                 client: Client | None = None, conf_path: str | None = None,
                 order: Iterable[int] | None = None, batch_size: int | None = None,
                 prefetch: PrefetchSettings | None = None) -> None:
        self.urls = list(urls)
        self.decode = decode or _identity
        self.order = order
        self.batch_size = batch_size
        self.prefetch = prefetch or DATASET_PREFETCH
        self._client = client
        self._conf_path = conf_path
        self._state: _WorkerState | None = None

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        state = self._here()
        urls = [self.urls[i] for i in indices]
        if urls and state.client.reads_locally(urls[0]):
            # Short-circuit reads (petrel.shortcircuit): the records come from the page
            # cache, read in this thread. A pre-read thread would not hide a wait, only
            # contend with this one for the GIL: the DataLoader read 41-42k objects/s
            # with it, 49-55k without
            # (bench/results/loader-2026-11-25-short-circuit-notes.md).
            datas = state.client.get_batch(urls)
        else:
            self._plan_from(state, [int(i) for i in indices])
            datas = state.cache.get_many(urls)
        return [self.decode(_present(data, url)) for data, url in zip(datas, urls, strict=True)]

    def stats(self) -> PrefetchStats | None:
        """This process's pre-read cache counters (None before the first read here)."""
        state = self._state
        return state.cache.stats() if state is not None and state.pid == os.getpid() else None

    def close(self) -> None:
        """Stop this process's prefetch thread; a later read starts a new one."""
        state, self._state = self._state, None
        if state is not None and state.pid == os.getpid():
            state.cache.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for spawned workers: the process state stays behind.
        return {**self.__dict__, "_state": None}

    # ----- per process ---------------------------------------------------------------------
    def _here(self) -> _WorkerState:
        state = self._state
        if state is None or state.pid != os.getpid():
            client = self._client or _make_client(self._conf_path)
            state = _WorkerState(os.getpid(), client,
                                 PrefetchCache(client.fetch_batch, self.prefetch))
            self._state = state
        return state

    def _plan_from(self, state: _WorkerState, indices: list[int]) -> None:
        """If `indices` is batch b of the order, plan b, b+W, b+2W... (W workers)."""
        if not indices:
            return
        self._ensure_order(state)
        batch = self._batch_number(state, indices)
        if batch is None and isinstance(self.order, EpochSampler) and \
                state.tried_epoch != state.order_epoch:
            # Persistent workers keep the sampler as it was at their start, and never see
            # set_epoch: try the epoch after the one this worker knows, once.
            known = state.order_epoch or 0
            state.tried_epoch = known
            self._load_order(state, known + 1)
            batch = self._batch_number(state, indices)
        step = _num_workers()
        if batch is None or batch == state.next_batch:
            state.next_batch = None if batch is None else batch + step
            return
        size = state.batch_size
        order = state.order
        plan = [[self.urls[i] for i in order[b * size:(b + 1) * size]]
                for b in range(batch, -(-len(order) // size), step)]
        state.cache.plan_batches(plan)
        state.next_batch = batch + step

    def _ensure_order(self, state: _WorkerState) -> None:
        sampler = self.order
        if isinstance(sampler, EpochSampler):
            # In the main process (num_workers=0) the sampler is the DataLoader's own, and
            # its set_epoch shows here.
            if state.order_epoch is None or sampler.epoch != state.sampler_epoch:
                state.sampler_epoch = sampler.epoch
                self._load_order(state, sampler.epoch)
        elif state.order_epoch is None:
            self._load_order(state, None)

    def _batch_number(self, state: _WorkerState, indices: list[int]) -> int | None:
        start = state.position.get(indices[0])
        if start is None:
            return None
        size = state.batch_size or self.batch_size or len(indices)
        if start % size or state.order[start:start + len(indices)] != indices:
            return None
        state.batch_size = size
        return start // size

    def _load_order(self, state: _WorkerState, epoch: int | None) -> None:
        if isinstance(self.order, EpochSampler):
            state.order = self.order.indices(epoch)
        elif self.order is not None:
            state.order = [int(i) for i in self.order]
        else:
            state.order = list(range(len(self.urls)))
        state.order_epoch = -1 if epoch is None else epoch
        state.position = {index: pos for pos, index in enumerate(state.order)}
        state.next_batch = None


# ----- iterable ----------------------------------------------------------------------------
class IterableDataset(_FromSources, TorchIterableDataset[Any]):
    """Iterable dataset over petrel URLs, split by rank and by DataLoader worker.

    Each epoch, the URLs are shuffled by (seed, epoch) (when `shuffle`), dealt to ranks
    (`order[rank::world_size]`: torch.distributed's when it is initialised, else the
    arguments, else 0 of 1), then to this rank's DataLoader workers the same way; each
    worker reads its share through a pre-read cache, `prefetch.batch_items` per request.
    `drop_uneven` cuts every rank to the same count (what DDP needs to stay in step).
    Call `set_epoch(epoch)` before iterating each epoch (with `persistent_workers=False`,
    the default, workers see it).
    """

    def __init__(self, urls: Sequence[str], decode: Decode | None = None, *,
                 client: Client | None = None, conf_path: str | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_uneven: bool = False,
                 prefetch: PrefetchSettings | None = None) -> None:
        self.urls = list(urls)
        self.decode = decode or _identity
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.drop_uneven = drop_uneven
        self.prefetch = prefetch or DATASET_PREFETCH
        self._client = client
        self._conf_path = conf_path

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> list[str]:
        """The URLs this rank and worker read this epoch, in order."""
        rank, world = self._rank_world()
        order = permutation(len(self.urls), self.seed, self.epoch, shuffle=self.shuffle)
        mine = order[rank::world]
        if self.drop_uneven:
            mine = mine[:len(order) // world]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        return [self.urls[i] for i in mine]

    def __iter__(self) -> Iterator[Any]:
        urls = self.shard()
        client = self._client or _make_client(self._conf_path)
        step = self.prefetch.batch_items
        with PrefetchCache(client.fetch_batch, self.prefetch) as cache:
            cache.plan(urls)
            for start in range(0, len(urls), step):
                chunk = urls[start:start + step]
                for data, url in zip(cache.get_many(chunk), chunk, strict=True):
                    yield self.decode(_present(data, url))

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None or self.world_size is not None:
            rank, world = self.rank or 0, self.world_size or 1
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        return rank, world


def _num_workers() -> int:
    info = get_worker_info()
    return 1 if info is None else int(info.num_workers)


def _present(data: bytes | None, url: str) -> bytes:
    if data is None:
        raise NoSuchKey(f"{url} does not exist", resource=url)
    return data
