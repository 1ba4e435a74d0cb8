"""The write link (petrel_gateway.writes): a reader's small PUTs stored by the primary.
Both ends in one event loop over a real socket pair, a real Store on the primary's
end and a real Replica (a RocksDB secondary) on the reader's; tests/gateway/
test_processes.py runs them as the gateway's separate processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from petrel import format as fmt
from petrel.errors import MetadataTooLarge, NoSuchBucket, NotServedHere, PetrelError
from petrel.replica import Generation, Replica, replica_dir
from petrel.settings import StoreConfig
from petrel.store import Store
from petrel_gateway.writes import WriteClient, WriteOutcomeUnknown, WriteServer

BUCKET = "linked"


@pytest.fixture
async def linked(tmp_path) -> AsyncIterator[tuple[Store, Replica, Any]]:  # type: ignore[no-untyped-def]
    """(primary store, replica, server transport), the replica's writes on the link."""
    config = StoreConfig(data_dir=str(tmp_path / "data"))
    store = await Store.open(config)
    os.makedirs(replica_dir(config.data_dir), exist_ok=True)
    generation = Generation(os.path.join(replica_dir(config.data_dir), "generation"),
                            create=True)
    store.kv.after_write = generation.bump
    await store.create_bucket(BUCKET)
    replica = Replica(config, str(tmp_path / "secondary"))
    loop = asyncio.get_running_loop()
    primary_end, reader_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server_transport, _ = await loop.create_unix_connection(
        lambda: WriteServer(store), sock=primary_end)
    _, replica.writes = await loop.create_unix_connection(WriteClient, sock=reader_end)
    yield store, replica, server_transport
    server_transport.close()
    replica.close()
    await store.close()


def _read(replica: Replica, key: str) -> bytes:
    located = replica.locate_object(BUCKET, key)
    read = replica.read_object_now(located, None)
    assert read is not None
    return read[0]


async def test_puts_through_the_link_are_stored_and_read_back(linked) -> None:  # type: ignore[no-untyped-def]
    store, replica, _ = linked
    bodies = {f"k/{i:03d}": os.urandom(100 + i * 37) for i in range(200)}
    meta = fmt.ObjectMeta("text/plain", (("colour", "blue"),))
    replica.check_put(BUCKET, "k/000", meta)
    written = await asyncio.gather(*(replica.put_object(BUCKET, key, body, meta)
                                     for key, body in bodies.items()))
    # Each answer pairs with its own request, concurrent as they were.
    assert [w.etag for w in written] == [hashlib.md5(b).hexdigest() for b in bodies.values()]
    for key, body in bodies.items():
        assert _read(replica, key) == body  # read-after-write on the reader's side
        located = store.locate_object(BUCKET, key)
        assert located.info.user_metadata == (("colour", "blue"),)
        assert located.info.content_type == "text/plain"


async def test_the_primary_errors_reach_the_reader_as_raised(linked) -> None:  # type: ignore[no-untyped-def]
    store, replica, _ = linked
    await store.delete_bucket(BUCKET)
    with pytest.raises(NoSuchBucket) as missing:  # the primary's check, not the reader's
        await replica.writes.put_object(BUCKET, "k", b"x", fmt.EMPTY_META,
                                        hashlib.md5(b"x").digest())
    assert missing.value.resource == BUCKET and missing.value.status == 404
    with pytest.raises(NoSuchBucket):  # and the reader's own check agrees
        replica.check_put(BUCKET, "k", fmt.EMPTY_META)
    await store.create_bucket(BUCKET)
    with pytest.raises(MetadataTooLarge):
        replica.check_put(BUCKET, "k", fmt.ObjectMeta("", (("m", "v" * 4096),)))


async def test_a_write_waiting_when_the_link_ends_has_no_answer(linked) -> None:  # type: ignore[no-untyped-def]
    store, replica, server_transport = linked
    client: WriteClient = replica.writes
    # The primary's end closes before it has read the request: the write waiting for
    # its answer fails as unknown (never as an S3 error, which would say "not stored"),
    # and a later one is not sent at all.
    server_transport.pause_reading()
    waiting = asyncio.ensure_future(replica.put_object(BUCKET, "lost", b"never acked"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    server_transport.close()
    with pytest.raises(WriteOutcomeUnknown):
        await asyncio.wait_for(waiting, 5)
    assert client.closed
    with pytest.raises(NotServedHere):
        await replica.put_object(BUCKET, "later", b"x")
    with pytest.raises(PetrelError):
        store.locate_object(BUCKET, "lost")
