"""get_batch / fetch_batch / put_batch against a live gateway (and, for streams cut
short, a fake one): request order kept, missing keys as None, chunks and buckets split
and merged back, per-item errors returned or raised."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiohttp import web
from clientconf import write_conf
from fakeserver import fake_server
from rawhttp import delete_bucket_fully

from petrel import wire
from petrel.client import Client, InvalidUrl
from petrel.errors import InvalidRange, KeyTooLongError, MalformedBatch, PetrelError


@pytest.fixture(scope="module")
def small_batches(conf_path: Path) -> Client:
    """Chunks of 7 items, 3 in flight: a 50-key call is 8 requests."""
    return Client(str(conf_path), batch_size=7, batch_threads=3)


def _objects(bucket: str, count: int, prefix: str = "o") -> dict[str, bytes]:
    return {f"s3://{bucket}/{prefix}/{i:04d}": f"{prefix}-{i}-".encode() * (i % 17 + 1)
            for i in range(count)}


def test_put_batch_then_get_batch(client: Client, bucket: str, s3) -> None:  # type: ignore[no-untyped-def]
    objects = _objects(bucket, 300)
    etags = client.put_batch(objects.items())
    assert len(etags) == 300
    assert etags[5] == s3.head_object(Bucket=bucket, Key="o/0005")["ETag"].strip('"')
    urls = list(objects)[::-1]
    assert client.get_batch(urls) == [objects[url] for url in urls]
    assert client.get(urls[0]) == objects[urls[0]]


def test_missing_and_duplicate_keys(client: Client, bucket: str) -> None:
    objects = _objects(bucket, 5)
    client.put_batch(objects.items())
    a, b = list(objects)[:2]
    missing = f"s3://{bucket}/no/such/key"
    urls = [a, missing, b, a, a, missing]
    assert client.get_batch(urls) == [objects[a], None, objects[b], objects[a], objects[a], None]
    assert client.fetch_batch(urls) == client.get_batch(urls)
    assert client.get_batch([]) == []


def test_bad_urls_are_refused_before_any_request(client: Client, bucket: str) -> None:
    client.put(f"s3://{bucket}/here", b"here")
    good = f"s3://{bucket}/here"
    for bad in (f"s3://{bucket}", f"s3://{bucket}/", "s3:///key", f"http://{bucket}/k",
                f"::s3://{bucket}/k", b"s3://bytes/key"):
        with pytest.raises(InvalidUrl):
            client.get_batch([good, bad])  # type: ignore[list-item]  # bytes on purpose
    assert client.get_batch([good]) == [b"here"]


def test_missing_bucket_reads_as_none(client: Client, bucket: str) -> None:
    client.put(f"s3://{bucket}/here", b"here")
    gone = f"s3://nobucket-{uuid.uuid4().hex[:8]}/k"
    assert client.get_batch([gone, f"s3://{bucket}/here", gone]) == [None, b"here", None]


def test_ranges(client: Client, bucket: str) -> None:
    url = f"s3://{bucket}/digits"
    client.put(url, b"0123456789")
    urls = [url] * 4
    ranges = [(2, 3), (7, None), None, (0, 0)]
    assert client.get_batch(urls, ranges) == [b"234", b"789", b"0123456789", b""]
    results = client.fetch_batch([url, url], [(50, 2), (1, 1)])
    assert isinstance(results[0], InvalidRange)
    assert results[1] == b"1"
    with pytest.raises(InvalidRange):
        client.get_batch([url], [(50, 2)])
    with pytest.raises(ValueError, match="ranges"):
        client.get_batch([url], [])


def test_more_keys_than_one_chunk_across_buckets(small_batches: Client, client: Client,
                                                  bucket: str, s3) -> None:  # type: ignore[no-untyped-def]
    other = "c-" + uuid.uuid4().hex[:20]
    client.create_bucket(f"s3://{other}")
    try:
        first, second = _objects(bucket, 30, "a"), _objects(other, 20, "b")
        assert len(small_batches.put_batch([*first.items(), *second.items()])) == 50
        # Interleaved buckets and clusters: answers come back in the caller's order.
        urls = [url for pair in zip(first, second, strict=False) for url in pair]
        urls += [url.replace("s3://", "other:s3://") for url in list(first)[20:]]
        expected = [first.get(url) or second.get(url) or first[url.split(":", 1)[1]]
                    for url in urls]
        assert small_batches.get_batch(urls) == expected
        assert small_batches.get_batch(urls[:7]) == expected[:7]  # one exact chunk
    finally:
        delete_bucket_fully(s3, other)


def test_put_batch_item_error_raises_after_the_rest(client: Client, bucket: str) -> None:
    too_long = f"s3://{bucket}/" + "k" * 2000
    good = f"s3://{bucket}/good"
    with pytest.raises(KeyTooLongError):
        client.put_batch([(good, b"stored anyway"), (too_long, b"x")])
    assert client.get(good) == b"stored anyway"


def test_put_batch_accepts_str(client: Client, bucket: str) -> None:
    client.put_batch([(f"s3://{bucket}/s", "héllo")])
    assert client.get_batch([f"s3://{bucket}/s"]) == ["héllo".encode()]


# ----- faults a real gateway does not produce on demand -------------------------------------
def _truncated_answer(keys: list[str]) -> bytes:
    pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
    for key in keys:
        pieces += wire.frame(wire.Status.OK, key, wire.info_aux(wire.ItemInfo(3, 0, "e")), b"abc")
    return b"".join(pieces)  # no END frame: the gateway died mid-stream


def test_stream_cut_short_is_an_error_not_a_short_batch(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        keys = [frame.key for frame in wire.decode(await request.read(), wire.Kind.GET_REQUEST)]
        response = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(_truncated_answer(keys[: len(keys) // 2]))
        await response.write_eof()  # a clean end of the HTTP body, but no END frame
        return response

    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "c.conf", server.endpoint))
        urls = [f"s3://b/k{i}" for i in range(6)]
        with pytest.raises(MalformedBatch, match="truncated"):
            client.get_batch(urls)
        results = client.fetch_batch(urls)
        assert all(isinstance(result, MalformedBatch) for result in results)


def test_answer_for_other_keys_is_an_error(tmp_path: Path) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        keys = [frame.key for frame in wire.decode(await request.read(), wire.Kind.GET_REQUEST)]
        body = _truncated_answer(keys[::-1]) + wire.end_frame(len(keys))
        return web.Response(body=body, headers={"Content-Type": wire.CONTENT_TYPE})

    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "c.conf", server.endpoint))
        with pytest.raises(MalformedBatch, match="in the place of"):
            client.get_batch(["s3://b/k1", "s3://b/k2"])
        results = client.fetch_batch(["s3://b/k1", "s3://b/k2"])
        assert all(isinstance(result, PetrelError) for result in results)


def test_answer_in_chunks_cut_anywhere_is_decoded(tmp_path: Path) -> None:
    # The gateway cuts its chunks between frames; a proxy may cut them anywhere (here 1,
    # 7 and 1000 bytes): frames that straddle chunks are put back together.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        keys = [frame.key for frame in wire.decode(await request.read(), wire.Kind.GET_REQUEST)]
        pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
        for key in keys:
            if key == "gone":
                wire.add_frame(pieces, wire.Status.NOT_FOUND, key,
                               wire.error_aux("NoSuchKey", "no such key"))
            else:
                wire.add_found(pieces, key, 3000, 0, "e", key.encode() * 1000)
        pieces.append(wire.end_frame(len(keys)))
        body = b"".join(pieces)
        response = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        position, step = 0, 1
        while position < len(body):
            await response.write(body[position:position + step])
            position += step
            step = {1: 7, 7: 1000, 1000: 1}[step]
        await response.write_eof()
        return response

    with fake_server(handler) as server:
        client = Client(write_conf(tmp_path / "c.conf", server.endpoint))
        keys = ["abc", "gone", "xyz", "abc"]
        assert client.get_batch([f"s3://b/{k}" for k in keys]) == \
            [b"abc" * 1000, None, b"xyz" * 1000, b"abc" * 1000]
