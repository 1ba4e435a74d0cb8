"""A client built and used before fork works in the children (DataLoader workers), in
threads, and after pickling (spawn-started workers)."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
from concurrent.futures import ThreadPoolExecutor

from petrel.client import Client

CHILDREN = 3
OBJECTS = 20


def _digest_in_child(client: Client, urls: list[str]) -> list[str]:
    # Singles over a connection of the child's own, then a batch on the child's threads.
    singles = [hashlib.sha256(client.get(url) or b"").hexdigest() for url in urls]
    batch = [hashlib.sha256(data or b"").hexdigest() for data in client.get_batch(urls)]
    assert singles == batch
    return singles


def _child(args: tuple[Client, list[str]]) -> list[str]:
    return _digest_in_child(*args)


def test_client_used_before_fork_works_in_children(client: Client, bucket: str) -> None:
    urls = [f"s3://{bucket}/fork/{i}" for i in range(OBJECTS)]
    for i, url in enumerate(urls):
        client.put(url, f"object {i}".encode() * (i + 1))
    expected = _digest_in_child(client, urls)  # the parent's pools and batch threads exist
    context = multiprocessing.get_context("fork")
    with context.Pool(CHILDREN) as pool:
        # The client object itself is inherited through fork (the module-level global
        # a DataLoader worker would see); the argument travels pickled.
        answers = pool.map(_child, [(client, urls)] * CHILDREN, chunksize=1)
    assert answers == [expected] * CHILDREN
    assert _digest_in_child(client, urls) == expected  # the parent's connections still work


_INHERITED: Client | None = None


def _inherited_child(urls: list[str]) -> list[str]:
    assert _INHERITED is not None
    return _digest_in_child(_INHERITED, urls)


def test_inherited_client_object_works_after_fork(client: Client, bucket: str) -> None:
    global _INHERITED
    urls = [f"s3://{bucket}/inh/{i}" for i in range(OBJECTS)]
    client.put_batch([(url, url.encode()) for url in urls])
    expected = _digest_in_child(client, urls)
    _INHERITED = client
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as pool:
            answers = pool.map(_inherited_child, [urls, urls])
    finally:
        _INHERITED = None
    assert answers == [expected, expected]


def test_pickled_client_works(client: Client, bucket: str) -> None:
    client.put(f"s3://{bucket}/p", b"pickled")
    copy = pickle.loads(pickle.dumps(client))
    assert copy.get(f"s3://{bucket}/p") == b"pickled"
    assert copy.config == client.config


def test_threads_share_one_client(client: Client, bucket: str) -> None:
    urls = [f"s3://{bucket}/th/{i}" for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        written = list(pool.map(lambda url: client.put(url, url.encode()), urls))
        read = list(pool.map(client.get, urls))
    assert written == [len(url.encode()) for url in urls]
    assert read == [url.encode() for url in urls]


def test_close_keeps_the_client_usable(conf_path, bucket: str) -> None:  # type: ignore[no-untyped-def]
    client = Client(str(conf_path), batch_size=2)
    urls = [f"s3://{bucket}/close/{i}" for i in range(5)]
    client.put_batch([(url, b"v") for url in urls])
    client.close()
    client.close()
    assert client.get_batch(urls) == [b"v"] * 5
    assert client.get(urls[0]) == b"v"
    client.close()
