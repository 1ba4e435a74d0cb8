"""The batch wire format (petrel/wire.py): round trips, and every truncation or flipped
bit of an encoded stream is refused with MalformedBatch, never decoded as other data."""

from __future__ import annotations

import itertools

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


def _decoded_slowly(body: bytes, items_max: int | None = None
                    ) -> list[tuple[str, tuple[int, int | None] | None]]:
    return [(f.key, wire.frame_range(f))
            for f in wire.decode(body, wire.Kind.GET_REQUEST, items_max=items_max)]


def _outcome(decoder, body: bytes, items_max: int | None = None):  # type: ignore[no-untyped-def]
    try:
        return decoder(body, items_max)
    except MalformedBatch:
        return MalformedBatch


@given(get_items)
def test_decode_get_request_is_decode_with_frame_range(
        items: list[tuple[str, tuple[int, int | None] | None]]) -> None:
    body = wire.encode_get_request(items)
    assert wire.decode_get_request(body) == items
    assert _outcome(wire.decode_get_request, body, 3) == _outcome(_decoded_slowly, body, 3)


@settings(max_examples=300)
@given(get_items.filter(bool), st.data())
def test_decode_get_request_refuses_what_decode_refuses(
        items: list[tuple[str, tuple[int, int | None] | None]], data: st.DataObject) -> None:
    # Cut anywhere, one bit flipped anywhere, or bytes appended: the one-pass decoder
    # fails exactly where decode + frame_range fail, and agrees where they succeed.
    body = wire.encode_get_request(items)
    cut = body[:data.draw(st.integers(0, len(body) - 1))]
    flipped = bytearray(body)
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    flipped[bit // 8] ^= 1 << (bit % 8)
    for damaged in (cut, bytes(flipped), body + data.draw(st.binary(min_size=1, max_size=30))):
        assert _outcome(wire.decode_get_request, damaged) is MalformedBatch
        assert _outcome(_decoded_slowly, damaged) is MalformedBatch


@given(st.binary(max_size=200))
def test_decode_get_request_agrees_on_arbitrary_bytes(body: bytes) -> None:
    assert _outcome(wire.decode_get_request, body) == _outcome(_decoded_slowly, body)


def test_decode_get_request_refuses_bad_ranges_and_statuses() -> None:
    # Frames that checksum correctly but say something a request cannot.
    def request(*frames: tuple[int, str, bytes, int]) -> bytes:
        pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_REQUEST)]
        for status, key, aux, flags in frames:
            pieces += wire.frame(status, key, aux, flags=flags)  # type: ignore[arg-type]
        pieces.append(wire.end_frame(len(frames)))
        return b"".join(pieces)

    for body, message in ((request((0, "a", b"xx", 0)), "unexpected aux"),
                          (request((0, "a", b"short", wire.FLAG_RANGE)), "not 16 bytes")):
        with pytest.raises(MalformedBatch, match=message):
            wire.decode_get_request(body)
        assert _outcome(_decoded_slowly, body) is MalformedBatch
    with pytest.raises(MalformedBatch, match="more than 1"):
        wire.decode_get_request(request((0, "a", b"", 0), (0, "b", b"", 0)), items_max=1)


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
    payload = bytes(range(256)) * 1024  # 256 KiB: hashed without joining it to its header
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


# ----- the gateway's encoder and the client's decoder of batch get answers -------------
@given(responses)
def test_add_found_and_add_frame_encode_what_frame_encodes(
        items: list[tuple[str, bytes | None]]) -> None:
    pieces: list[bytes | memoryview] = [wire.stream_header(wire.Kind.GET_RESPONSE)]
    for number, (key, data) in enumerate(items):
        if data is None:
            wire.add_frame(pieces, wire.Status.NOT_FOUND, key,
                           wire.error_aux("NoSuchKey", f"no {key}"))
        else:
            wire.add_found(pieces, key, len(data), 1_700_000_000_000 + number, "ab" * 16, data)
    pieces.append(wire.end_frame(len(items)))
    assert b"".join(pieces) == _response(items)


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@given(responses, st.data())
def test_decode_get_response_matches_decode_however_the_stream_is_cut(
        items: list[tuple[str, bytes | None]], data: st.DataObject) -> None:
    body = _response(items)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    answers = wire.decode_get_response(_cut(body, cuts), [key for key, _ in items])
    assert len(answers) == len(items)
    for answer, frame in zip(answers, wire.decode(body, wire.Kind.GET_RESPONSE), strict=True):
        if frame.status is wire.Status.OK:
            assert type(answer) is bytes and answer == bytes(frame.data)
        else:
            assert isinstance(answer, wire.Frame)
            assert (answer.status, answer.key, bytes(answer.aux)) == \
                (frame.status, frame.key, bytes(frame.aux))


@given(responses, st.data())
def test_decode_get_response_refuses_every_truncation(
        items: list[tuple[str, bytes | None]], data: st.DataObject) -> None:
    body = _response(items)
    cut = data.draw(st.integers(0, len(body) - 1))
    cuts = data.draw(st.lists(st.integers(0, cut), max_size=4))
    with pytest.raises(MalformedBatch):
        wire.decode_get_response(_cut(body[:cut], cuts), [key for key, _ in items])


@settings(max_examples=300)
@given(responses, st.data())
def test_decode_get_response_refuses_every_flipped_bit(
        items: list[tuple[str, bytes | None]], data: st.DataObject) -> None:
    body = bytearray(_response(items))
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    body[bit // 8] ^= 1 << (bit % 8)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=4))
    with pytest.raises(MalformedBatch):
        wire.decode_get_response(_cut(bytes(body), cuts), [key for key, _ in items])


def test_decode_get_response_checks_the_keys_asked_and_what_follows_the_end() -> None:
    body = _response([("a", b"1"), ("b", None)])
    assert wire.decode_get_response([body], ["a", "b"])[0] == b"1"
    with pytest.raises(MalformedBatch, match="answered 'b' in the place of 'c'"):
        wire.decode_get_response([body], ["a", "c"])
    with pytest.raises(MalformedBatch, match="in the place of nothing"):
        wire.decode_get_response([body], ["a"])
    with pytest.raises(MalformedBatch, match="2 items for 3"):
        wire.decode_get_response([body], ["a", "b", "c"])
    with pytest.raises(MalformedBatch, match="after the END"):
        wire.decode_get_response([body + b"x"], ["a", "b"])
    with pytest.raises(MalformedBatch, match="after the END"):
        wire.decode_get_response([body, b"", b"x"], ["a", "b"])
    with pytest.raises(MalformedBatch, match="kind"):
        wire.decode_get_response([wire.encode_get_request([("a", None)])], ["a"])
    with pytest.raises(MalformedBatch, match="truncated"):
        wire.decode_get_response([], [])


def test_decode_get_response_joins_a_frame_once_however_small_its_pieces() -> None:
    # 8 MiB in 1 KiB pieces: joining the pending bytes to each piece as it arrives
    # would copy 32 GiB; a frame is joined once it is whole.
    payload = bytes(range(256)) * (32 * 1024)
    body = _response([("big", payload), ("small", b"s")])
    pieces = [body[i:i + 1024] for i in range(0, len(body), 1024)]
    assert wire.decode_get_response(pieces, ["big", "small"]) == [payload, b"s"]
