"""The batch wire format (petrel/wire.py): round trips, and every truncation or flipped
bit of an encoded stream is refused with MalformedBatch, never decoded as other data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petrel import wire
from petrel.errors import MalformedBatch

keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
ranges = st.none() | st.tuples(st.integers(0, 2**40), st.none() | st.integers(0, 2**40))
get_items = st.lists(st.tuples(keys, ranges), max_size=20)
put_items = st.lists(st.tuples(keys, st.binary(max_size=300), st.sampled_from(
    ["", "text/plain", "application/json"])), max_size=12)


def _response(items: list[tuple[str, bytes | None]]) -> bytes:
    pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
    for number, (key, data) in enumerate(items):
        if data is None:
            pieces += wire.frame(wire.Status.NOT_FOUND, key,
                                 wire.error_aux("NoSuchKey", f"no {key}"))
        else:
            info = wire.ItemInfo(len(data), 1_700_000_000_000 + number, "ab" * 16)
            pieces += wire.frame(wire.Status.OK, key, wire.info_aux(info), data)
    pieces.append(wire.end_frame(len(items)))
    return b"".join(pieces)


responses = st.lists(st.tuples(keys, st.none() | st.binary(max_size=200)), max_size=10)


@given(get_items)
def test_get_request_round_trip(items: list[tuple[str, tuple[int, int | None] | None]]) -> None:
    frames = wire.decode(wire.encode_get_request(items), wire.Kind.GET_REQUEST)
    assert [(f.key, wire.frame_range(f)) for f in frames] == items


@given(put_items)
def test_put_request_round_trip(items: list[tuple[str, bytes, str]]) -> None:
    frames = wire.decode(wire.encode_put_request(items), wire.Kind.PUT_REQUEST)
    assert [(f.key, bytes(f.data), str(f.aux, "utf-8")) for f in frames] == items


@given(responses)
def test_get_response_round_trip(items: list[tuple[str, bytes | None]]) -> None:
    frames = wire.decode(_response(items), wire.Kind.GET_RESPONSE)
    assert len(frames) == len(items)
    for frame, (key, data) in zip(frames, items, strict=True):
        assert frame.key == key
        if data is None:
            assert frame.status is wire.Status.NOT_FOUND
            assert wire.parse_error_aux(frame.aux) == ("NoSuchKey", f"no {key}")
        else:
            assert frame.status is wire.Status.OK
            assert bytes(frame.data) == data
            assert wire.parse_info_aux(frame.aux).size == len(data)


@given(responses, st.data())
def test_stream_decoder_matches_whole_decode(items: list[tuple[str, bytes | None]],
                                             data: st.DataObject) -> None:
    body = _response(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    decoder = wire.StreamDecoder(wire.Kind.GET_RESPONSE)
    got: list[wire.Frame] = []
    previous = 0
    for cut in [*cuts, len(body)]:
        got += decoder.feed(body[previous:cut])
        previous = cut
    decoder.finish()
    whole = wire.decode(body, wire.Kind.GET_RESPONSE)
    assert [(f.status, f.key, bytes(f.aux), bytes(f.data)) for f in got] == \
        [(f.status, f.key, bytes(f.aux), bytes(f.data)) for f in whole]


@given(responses, st.data())
def test_every_truncation_is_refused(items: list[tuple[str, bytes | None]],
                                     data: st.DataObject) -> None:
    body = _response(items)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(MalformedBatch):
        wire.decode(body[:cut], wire.Kind.GET_RESPONSE)
    decoder = wire.StreamDecoder(wire.Kind.GET_RESPONSE)
    with pytest.raises(MalformedBatch):
        decoder.feed(body[:cut])
        decoder.finish()


@settings(max_examples=300)
@given(responses, st.data())
def test_every_flipped_bit_is_refused(items: list[tuple[str, bytes | None]],
                                      data: st.DataObject) -> None:
    body = bytearray(_response(items))
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    body[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(MalformedBatch):
        wire.decode(bytes(body), wire.Kind.GET_RESPONSE)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    for kind in wire.Kind:
        try:
            frames = wire.decode(body, kind)
        except MalformedBatch:
            continue  # the one failure a decoder may raise
        assert all(f.status is not wire.Status.END for f in frames)


def test_wrong_kind_version_and_trailing_bytes_are_refused() -> None:
    body = wire.encode_get_request([("a", None)])
    with pytest.raises(MalformedBatch, match="kind"):
        wire.decode(body, wire.Kind.PUT_REQUEST)
    future = bytearray(body)
    future[4] = wire.VERSION + 1
    with pytest.raises(MalformedBatch, match="version"):
        wire.decode(bytes(future), wire.Kind.GET_REQUEST)
    with pytest.raises(MalformedBatch, match="after the END"):
        wire.decode(body + b"x", wire.Kind.GET_REQUEST)


def test_items_max_is_enforced_while_decoding() -> None:
    body = wire.encode_get_request([(f"k{i}", None) for i in range(5)])
    assert len(wire.decode(body, wire.Kind.GET_REQUEST, items_max=5)) == 5
    with pytest.raises(MalformedBatch, match="more than 4"):
        wire.decode(body, wire.Kind.GET_REQUEST, items_max=4)


def test_large_payload_checksum_is_streamed_and_checked() -> None:
    payload = bytes(range(256)) * 1024  # over the join threshold: hashed in pieces
    body = bytearray(wire.encode_put_request([("big", payload, "")]))
    assert bytes(wire.decode(bytes(body), wire.Kind.PUT_REQUEST)[0].data) == payload
    body[wire.STREAM_HEADER_BYTES + wire.FRAME_HEADER_BYTES + 500] ^= 0x01
    with pytest.raises(MalformedBatch, match="checksum"):
        wire.decode(bytes(body), wire.Kind.PUT_REQUEST)


def test_ranges_and_keys_are_validated_when_encoding() -> None:
    with pytest.raises(MalformedBatch):
        wire.encode_get_request([("a", (-1, None))])
    with pytest.raises(MalformedBatch):
        wire.encode_get_request([("k" * 70_000, None)])
