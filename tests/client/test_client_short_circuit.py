"""Short-circuit reads (petrel.shortcircuit): a client on the gateway's machine reads
batch gets' records from the segment files, after a batch locate. Against a live
gateway: the same answers as batch gets through the gateway (missing, duplicate and
ranged keys, errors, large objects, a missing bucket), reads that really bypass the
gateway's batch get (its request counters), corrupt bytes on disk never returned, and
the client falling back to the gateway when the files are not the gateway's (a fake
locate answer: another machine cannot be made here)."""

from __future__ import annotations

import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from clientconf import TEST_RETRY, write_conf
from fakeserver import error_response, fake_server

from petrel import client as client_module
from petrel import format as fmt
from petrel import shortcircuit, wire
from petrel.client import Client, ConfigError
from petrel.errors import InternalError, InvalidRange, PetrelError
from petrel.testing.gateway import Gateway
from petrel.transport import Endpoint

_BATCH = re.compile(r'^petrel_requests_total\{operation="(batch_\w+_objects)",'
                    r'status="(\d+)"\} (\S+)$', re.M)


def _batch_requests(gateway: Gateway) -> dict[str, float]:
    """Batch requests the gateway answered 200, by operation."""
    with urllib.request.urlopen(gateway.endpoint + "/metrics", timeout=10) as response:
        body = response.read()
    counts: dict[str, float] = {}
    for operation, code, value in _BATCH.findall(body.decode()):
        if code == "200":
            counts[operation] = counts.get(operation, 0.0) + float(value)
    return counts


@pytest.fixture(scope="module")
def local_client(conf_path: Path) -> Iterator[Client]:
    made = Client(str(conf_path), retry=TEST_RETRY, short_circuit=True, batch_size=50)
    yield made
    made.close()


@pytest.fixture(scope="module")
def gateway_client(conf_path: Path) -> Iterator[Client]:
    made = Client(str(conf_path), retry=TEST_RETRY, short_circuit=False, batch_size=50)
    yield made
    made.close()


def _outcome(result: bytes | PetrelError | None) -> object:
    return (type(result), result.code) if isinstance(result, PetrelError) else result


def test_same_answers_as_through_the_gateway(local_client: Client, gateway_client: Client,
                                            bucket: str, gateway: Gateway) -> None:
    objects = {f"s3://{bucket}/d/{i:04d}": os.urandom(i * 37 % 5000) for i in range(300)}
    local_client.put_batch(objects.items())
    large = f"s3://{bucket}/large"
    local_client.put(large, os.urandom(1024 * 1024 + 7))  # over the pack threshold
    urls = list(objects)[::-3] + [f"s3://{bucket}/missing", large] + list(objects)[:40] * 2
    ranges: list[tuple[int, int | None] | None] = [None] * len(urls)
    ranges[1], ranges[2], ranges[3] = (3, 10), (5, None), (10**9, 5)  # the last: InvalidRange
    ranges[urls.index(large)] = (1000, 2000)
    urls += [f"s3://nobucket-{uuid.uuid4().hex[:8]}/k", f"s3://{bucket}/" + "k" * 2000]
    ranges += [None, None]

    before = _batch_requests(gateway)
    local = local_client.fetch_batch(urls, ranges)
    after = _batch_requests(gateway)
    through = gateway_client.fetch_batch(urls, ranges)

    assert [_outcome(r) for r in local] == [_outcome(r) for r in through]
    assert local[1] == objects[urls[1]][3:13]
    assert local[2] == objects[urls[2]][5:]
    assert isinstance(local[3], InvalidRange)
    assert local[urls.index(f"s3://{bucket}/missing")] is None
    assert len(local[urls.index(large)]) == 2000  # type: ignore[arg-type]
    assert local[-2] is None  # a missing bucket reads as None, as through the gateway
    # Located, not read by the gateway: only the large object, the invalid range and
    # the over-long key went through batch gets (their bucket's calls: one request
    # each, as the client's batches of 50 put them in 2 of the calls).
    located = after.get("batch_locate_objects", 0) - before.get("batch_locate_objects", 0)
    fetched = after.get("batch_get_objects", 0) - before.get("batch_get_objects", 0)
    assert located >= len(urls) // 50
    assert 1 <= fetched <= 3


def test_every_object_read_back_byte_identical(local_client: Client, bucket: str,
                                               gateway: Gateway) -> None:
    objects = {f"s3://{bucket}/e/{i:05d}": os.urandom(10_240) for i in range(2000)}
    local_client.put_batch(objects.items())
    urls = list(objects)
    urls = urls[1::2] + urls[::2]
    before = _batch_requests(gateway)
    assert local_client.get_batch(urls) == [objects[url] for url in urls]
    after = _batch_requests(gateway)
    assert after.get("batch_get_objects", 0) == before.get("batch_get_objects", 0)


def _segment_file(gateway: Gateway, needle: bytes) -> tuple[str, int]:
    """The segment file of the gateway's data directory holding `needle`, and where."""
    for root, _, names in os.walk(gateway.data_dir):
        for name in names:
            if name.endswith(".seg"):
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    offset = handle.read().find(needle)
                if offset >= 0:
                    return path, offset
    raise AssertionError("no segment file holds the object")


def test_corrupt_bytes_on_disk_are_never_returned(local_client: Client, bucket: str,
                                                  gateway: Gateway) -> None:
    payload = b"corrupt-me-" + uuid.uuid4().bytes * 64
    good = {f"s3://{bucket}/fine/{i}": os.urandom(500) for i in range(20)}
    local_client.put_batch([*good.items(), (f"s3://{bucket}/bad", payload)])
    path, offset = _segment_file(gateway, payload)
    with open(path, "r+b") as handle:
        handle.seek(offset + 100)
        byte = handle.read(1)
        handle.seek(offset + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    urls = [*good, f"s3://{bucket}/bad"]
    results = local_client.fetch_batch(urls)
    assert results[:-1] == list(good.values())
    # The client's check failed, the gateway's too: its error, not the bytes.
    assert isinstance(results[-1], InternalError), results[-1]
    with pytest.raises(InternalError):
        local_client.get_batch(urls)


def test_read_located_checks_what_it_reads(tmp_path: Path) -> None:
    key, payload = "k", b"payload-bytes" * 10
    record = fmt.encode_record(flags=0, key=b"bkt/" + key.encode(), meta=b"",
                               payload=payload, seq=1, mtime_ms=0)
    path = tmp_path / "0000000000000001.seg"
    path.write_bytes(b"\0" * 64 + b"".join(record.parts))
    status = os.stat(path)
    file = wire.SegmentFile(1, str(path), status.st_dev, status.st_ino)
    entry = (1, 64, record.length, record.checksum)

    def located(*entry: int) -> list[wire.LocateEntry]:
        return [(*entry, wire.Where.LOCATED)]

    assert shortcircuit.read_located("bkt", [key], {1: file}, located(*entry, 4, 6)) == \
        ([payload[4:10]], [])
    # Another key, a wrong checksum, the wrong offset, a record cut short by the end of
    # the file: each fetched through the gateway.
    whole = located(*entry, 0, len(payload))
    assert shortcircuit.read_located("bkt", ["other"], {1: file}, whole) == ([None], [0])
    bad_sum = located(1, 64, record.length, record.checksum ^ 1, 0, len(payload))
    assert shortcircuit.read_located("bkt", [key], {1: file}, bad_sum) == ([None], [0])
    shifted = located(1, 60, record.length, record.checksum, 0, len(payload))
    assert shortcircuit.read_located("bkt", [key], {1: file}, shifted) == ([None], [0])
    cut = located(1, 64 + 10, record.length, record.checksum, 0, len(payload))
    assert shortcircuit.read_located("bkt", [key], {1: file}, cut) == ([None], [0])
    # FETCH and NOT_FOUND entries: fetched through the gateway, and left None.
    mixed = [(0, 0, 0, 0, 0, 0, wire.Where.FETCH), *whole,
             (0, 0, 0, 0, 0, 0, wire.Where.NOT_FOUND)]
    assert shortcircuit.read_located("bkt", ["far", key, "none"], {1: file}, mixed) == \
        ([None, payload, None], [0])
    # A file gone since the gateway looked: fetched through the gateway.
    gone = wire.SegmentFile(1, str(tmp_path / "gone.seg"), status.st_dev, status.st_ino)
    assert shortcircuit.read_located("bkt", [key], {1: gone}, whole) == ([None], [0])
    # Not a regular file (a FIFO, whose open would block without O_NONBLOCK): stop.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_stat = os.stat(fifo)
    named = wire.SegmentFile(1, str(fifo), fifo_stat.st_dev, fifo_stat.st_ino)
    with pytest.raises(shortcircuit.Unavailable, match="not the gateway's file"):
        shortcircuit.read_located("bkt", [key], {1: named}, whole)
    # Another file of the same name (another machine's): short-circuit reads stop.
    other = wire.SegmentFile(1, str(path), status.st_dev, status.st_ino + 1)
    with pytest.raises(shortcircuit.Unavailable, match="not the gateway's file"):
        shortcircuit.read_located("bkt", [key], {1: other}, whole)


def test_files_of_another_machine_turn_short_circuit_off(tmp_path: Path) -> None:
    """A gateway elsewhere whose segment path exists here as another file: the client
    notices (device and inode), reads through the gateway from then on, and returns
    the gateway's bytes."""
    decoy = tmp_path / "decoy.seg"
    decoy.write_bytes(b"x" * 4096)
    requests: list[str] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await request.read()
        requests.append(request.query_string)
        keys = ["a", "b"]
        if "batch-locate" in request.query:
            files = [wire.SegmentFile(7, str(decoy), 1, 1)]  # not decoy's device/inode
            body = wire.encode_locate_response(
                files, [(7, 0, 100, 1, 0, 50, wire.Where.LOCATED)] * 2)
        else:
            pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
            for key in keys:
                wire.add_found(pieces, key, 2, 0, "e", key.encode() * 2)
            pieces.append(wire.end_frame(len(keys)))
            body = b"".join(pieces)
        return web.Response(body=body, content_type=wire.CONTENT_TYPE)

    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "petreloss.conf", server.endpoint),
                        retry=TEST_RETRY, short_circuit=True)
        assert client.get_batch(["s3://bk/a", "s3://bk/b"]) == [b"aa", b"bb"]
        assert client.get_batch(["s3://bk/a", "s3://bk/b"]) == [b"aa", b"bb"]
    assert requests == ["batch-locate=", "batch-get=", "batch-get="]


def test_locate_answers_are_checked() -> None:
    files = [wire.SegmentFile(3, "/data/0003.seg", 1, 2)]
    entries: list[wire.LocateEntry] = [(3, 10, 20, 30, 0, 5, wire.Where.LOCATED),
                                       (0, 0, 0, 0, 0, 0, wire.Where.NOT_FOUND),
                                       (0, 0, 0, 0, 0, 0, wire.Where.FETCH)]
    body = wire.encode_locate_response(files, entries)
    assert wire.decode_locate_response(body, 3) == ({3: files[0]}, entries)
    with pytest.raises(wire.MalformedBatch):
        wire.decode_locate_response(body, 2)  # not the number of keys asked
    for cut in (len(body) - 1, len(body) // 2, 9):
        with pytest.raises(wire.MalformedBatch):
            wire.decode_locate_response(body[:cut], 3)
    flipped = bytearray(body)
    flipped[len(body) // 2] ^= 1
    with pytest.raises(wire.MalformedBatch):
        wire.decode_locate_response(bytes(flipped), 3)
    orphan = wire.encode_locate_response([], entries[:1])  # a location without its FILE
    with pytest.raises(wire.MalformedBatch, match="has no FILE"):
        wire.decode_locate_response(orphan, 1)


def test_short_circuit_setting(tmp_path: Path) -> None:
    assert Endpoint.parse("http://127.0.0.1:9000").is_loopback
    assert Endpoint.parse("http://localhost:9000").is_loopback
    assert Endpoint.parse("http://[::1]:9000").is_loopback
    assert not Endpoint.parse("http://10.1.2.3:9000").is_loopback
    assert not Endpoint.parse("http://petrel.example:9000").is_loopback
    conf = write_conf(tmp_path / "petreloss.conf", "http://127.0.0.1:9")
    text = conf.read_text()
    conf.write_text(text.replace("[other]\n", "[other]\nshort_circuit = False\n"))
    client = Client(str(conf))
    assert client.config.clusters["local"].short_circuit == "auto"
    assert client.config.clusters["other"].short_circuit == "false"
    assert client._reads_locally("local") and not client._reads_locally("other")
    assert not Client(str(conf), short_circuit=False)._reads_locally("local")
    conf.write_text(text.replace("[other]\n", "[other]\nshort_circuit = sometimes\n"))
    with pytest.raises(ConfigError, match="short_circuit"):
        Client(str(conf))



def test_nothing_local_pauses_batch_locates(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose records are all remote (an S3 backend's sealed segments) answers
    every key FETCH: the client then skips the batch locate for LOCAL_READS_PAUSE_S, and
    tries again after it."""
    requests: list[str] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await request.read()
        requests.append(request.query_string)
        if "batch-locate" in request.query:
            body = wire.encode_locate_response([], [(0, 0, 0, 0, 0, 0, wire.Where.FETCH)])
        else:
            pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
            wire.add_found(pieces, "a", 1, 0, "e", b"A")
            pieces.append(wire.end_frame(1))
            body = b"".join(pieces)
        return web.Response(body=body, content_type=wire.CONTENT_TYPE)

    now = [1000.0]
    monkeypatch.setattr(client_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "petreloss.conf", server.endpoint),
                        retry=TEST_RETRY, short_circuit=True)
        assert client.get_batch(["s3://bk/a"]) == [b"A"]
        assert client.get_batch(["s3://bk/a"]) == [b"A"]
        now[0] += client_module.LOCAL_READS_PAUSE_S + 1
        assert client.get_batch(["s3://bk/a"]) == [b"A"]
    assert requests == ["batch-locate=", "batch-get=", "batch-get=", "batch-locate=",
                        "batch-get="]


def test_a_gateway_without_batch_locate_is_read_through(tmp_path: Path) -> None:
    """An older gateway answers a batch locate MethodNotAllowed: the client reads through
    batch gets from then on, and the first call's answer is still whole."""
    requests: list[str] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await request.read()
        requests.append(request.query_string)
        if "batch-locate" in request.query:
            return error_response(405, "MethodNotAllowed")
        pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
        wire.add_found(pieces, "a", 1, 0, "e", b"A")
        pieces.append(wire.end_frame(1))
        return web.Response(body=b"".join(pieces), content_type=wire.CONTENT_TYPE)

    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "petreloss.conf", server.endpoint),
                        retry=TEST_RETRY)  # auto: the fake server is on loopback
        assert client.get_batch(["s3://bk/a"]) == [b"A"]
        assert client.get_batch(["s3://bk/a"]) == [b"A"]
        assert not client.reads_locally("s3://bk/a")
    assert requests == ["batch-locate=", "batch-get=", "batch-get="]
