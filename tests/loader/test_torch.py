"""petrel.torch against a real gateway: DataLoader with forked workers reads every object
exactly once per epoch, byte-identical, one batch request per batch (counted by the
gateway's /metrics); the iterable variant splits by rank and worker."""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import pytest
import torch.utils.data
from conftest import Gateway, Objects, batch_gets, store_objects

from petrel import manifest
from petrel.client import Client
from petrel.errors import NoSuchKey
from petrel.prefetch import PrefetchSettings
from petrel.torch import Dataset, EpochSampler, IterableDataset, permutation

BATCH = 64


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keep(batch: list[Any]) -> list[Any]:
    return batch


def loader(dataset: torch.utils.data.Dataset[Any],
           **kwargs: Any) -> torch.utils.data.DataLoader[Any]:
    kwargs.setdefault("batch_size", BATCH)
    if kwargs.get("num_workers", 0):
        kwargs.setdefault("multiprocessing_context", "fork")
        kwargs.setdefault("timeout", 60)
    return torch.utils.data.DataLoader(dataset, collate_fn=keep, **kwargs)


def read_epoch(data: torch.utils.data.DataLoader[Any]) -> list[list[str]]:
    return [list(batch) for batch in data]


@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_two_workers_reads_each_object_once_per_epoch(
        conf_path: str, objects: Objects, gateway: Gateway, persistent: bool) -> None:
    sampler = EpochSampler(len(objects.urls), shuffle=True, seed=7)
    dataset = Dataset(objects.urls, sha256, conf_path=conf_path, order=sampler)
    data = loader(dataset, sampler=sampler, num_workers=2, persistent_workers=persistent)
    batches_per_epoch = -(-len(objects.urls) // BATCH)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        before = batch_gets(gateway)
        batches = read_epoch(data)
        requests = batch_gets(gateway) - before
        got = [digest for batch in batches for digest in batch]
        expected = [objects.digests[objects.urls[i]] for i in sampler.indices(epoch)]
        assert got == expected  # every object once, byte-identical, in sampler order
        assert len(batches) == batches_per_epoch
        if persistent and epoch:
            assert requests <= batches_per_epoch  # the workers' LRU may hold some
        else:
            assert requests == batches_per_epoch  # one batch request per batch
        orders.append(got)
    assert orders[0] != orders[1]
    assert collections.Counter(orders[0]) == collections.Counter(orders[1])


def test_dataloader_with_short_circuit_reads(local_conf_path: str, objects: Objects,
                                           gateway: Gateway) -> None:
    """On the gateway's machine the workers read records from the segment files: every
    object once, byte-identical, in sampler order; one batch locate per batch and no
    batch get (the gateway read nothing)."""
    sampler = EpochSampler(len(objects.urls), shuffle=True, seed=11)
    dataset = Dataset(objects.urls, sha256, conf_path=local_conf_path, order=sampler)
    data = loader(dataset, sampler=sampler, num_workers=2)
    gets, locates = batch_gets(gateway), batch_gets(gateway, "batch_locate_objects")
    got = [digest for batch in read_epoch(data) for digest in batch]
    assert got == [objects.digests[objects.urls[i]] for i in sampler.indices(0)]
    assert batch_gets(gateway, "batch_locate_objects") - locates == \
        -(-len(objects.urls) // BATCH)
    assert batch_gets(gateway) == gets


def test_dataloader_random_sampler_falls_back_to_one_request_per_batch(
        conf_path: str, objects: Objects, gateway: Gateway) -> None:
    # torch's RandomSampler draws a new order in the main process only: the dataset
    # cannot plan, and reads each batch as it comes, still one request each.
    dataset = Dataset(objects.urls, sha256, conf_path=conf_path)
    data = loader(dataset, shuffle=True, num_workers=2)
    before = batch_gets(gateway)
    got = [digest for batch in read_epoch(data) for digest in batch]
    assert batch_gets(gateway) - before == -(-len(objects.urls) // BATCH)
    assert sorted(got) == sorted(objects.digests.values())


def test_sequential_order_in_the_main_process_prefetches(conf_path: str, objects: Objects,
                                                         gateway: Gateway) -> None:
    dataset = Dataset(objects.urls, sha256, conf_path=conf_path,
                      prefetch=PrefetchSettings(lookahead_batches_max=4))
    before = batch_gets(gateway)
    got = [digest for batch in read_epoch(loader(dataset)) for digest in batch]
    assert got == [objects.digests[u] for u in objects.urls]
    assert batch_gets(gateway) - before == -(-len(objects.urls) // BATCH)
    stats = dataset.stats()
    assert stats is not None and stats.keys_fetched == len(objects.urls)
    assert stats.hits > len(objects.urls) // 2  # most batches were fetched ahead
    dataset.close()


def test_getitem_and_missing_object(client: Client, objects: Objects) -> None:
    urls = [*objects.urls[:3], f"s3://{objects.bucket}/missing"]
    dataset = Dataset(urls, client=client)
    assert sha256(dataset[1]) == objects.digests[urls[1]]
    assert len(dataset) == 4
    with pytest.raises(NoSuchKey):
        dataset[3]
    with pytest.raises(NoSuchKey):
        dataset.__getitems__([0, 3])
    dataset.close()


def test_from_prefix_and_manifest(client: Client, conf_path: str, bucket: str) -> None:
    stored = store_objects(client, bucket, 40, prefix="train/")
    store_objects(client, bucket, 5, prefix="val/")
    by_prefix = Dataset.from_prefix(f"s3://{bucket}/train/", sha256, conf_path=conf_path)
    assert by_prefix.urls == stored.urls
    keys = [url.split("/", 3)[3] for url in stored.urls][::-1]
    client.put(f"s3://{bucket}/train.manifest", manifest.encode(keys, name="train"))
    by_manifest = Dataset.from_manifest(f"s3://{bucket}/train.manifest", sha256,
                                        conf_path=conf_path)
    assert by_manifest.urls == stored.urls[::-1]
    got = [d for batch in read_epoch(loader(by_manifest, batch_size=16)) for d in batch]
    assert got == [stored.digests[u] for u in stored.urls[::-1]]
    with pytest.raises(NoSuchKey):
        Dataset.from_manifest(f"s3://{bucket}/none.manifest", conf_path=conf_path)


def test_iterable_splits_by_rank_and_worker(conf_path: str, objects: Objects) -> None:
    seen: dict[int, list[str]] = {}
    for rank in range(2):
        dataset = IterableDataset(objects.urls, sha256, conf_path=conf_path, seed=3,
                                  rank=rank, world_size=2,
                                  prefetch=PrefetchSettings(batch_items=32))
        dataset.set_epoch(1)
        data = loader(dataset, batch_size=50, num_workers=2)
        seen[rank] = [d for batch in read_epoch(data) for d in batch]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(objects.digests.values())
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_iterable_shuffle_per_epoch_reproducible(conf_path: str, objects: Objects) -> None:
    def epoch_order(seed: int, epoch: int) -> list[str]:
        dataset = IterableDataset(objects.urls, sha256, conf_path=conf_path, seed=seed)
        dataset.set_epoch(epoch)
        return [d for batch in read_epoch(loader(dataset, num_workers=2)) for d in batch]

    first = epoch_order(seed=11, epoch=0)
    assert first == epoch_order(seed=11, epoch=0)
    assert first != epoch_order(seed=11, epoch=1)
    assert first != epoch_order(seed=12, epoch=0)
    assert sorted(first) == sorted(objects.digests.values())


def test_iterable_shard_without_workers(objects: Objects) -> None:
    urls = objects.urls[:101]
    shards = []
    for rank in range(4):
        dataset = IterableDataset(urls, rank=rank, world_size=4, drop_uneven=True, seed=1)
        shards.append(dataset.shard())
    assert {len(s) for s in shards} == {25}
    assert len(set().union(*map(set, shards))) == 100
    plain = IterableDataset(urls, shuffle=False)
    assert plain.shard() == urls
    with pytest.raises(ValueError):
        IterableDataset(urls, rank=2, world_size=2).shard()


def test_permutation_is_seeded() -> None:
    assert permutation(100, 1, 0) == permutation(100, 1, 0)
    assert permutation(100, 1, 0) != permutation(100, 1, 1)
    assert sorted(permutation(100, 5, 9)) == list(range(100))
    assert permutation(5, 1, 0, shuffle=False) == [0, 1, 2, 3, 4]
