"""The manifest format (petrel/manifest.py): round trips, the plain-text form, and a
decoder that refuses bad input with ManifestError only (property-tested)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petrel import manifest
from petrel.manifest import Manifest, ManifestEntry, ManifestError


@given(st.lists(st.tuples(st.text(min_size=1, max_size=40),
                          st.none() | st.integers(0, 2**40)), max_size=30))
def test_round_trip(items: list[tuple[str, int | None]]) -> None:
    entries = [ManifestEntry(key, size) for key, size in items]
    decoded = manifest.decode(manifest.encode(entries, name="x"))
    assert decoded == Manifest(tuple(entries), {"name": "x"})


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        manifest.decode(data)


def test_plain_text_and_blank_lines() -> None:
    assert manifest.decode(b"a/1.jpg\r\n\nb/2.jpg\n").keys == ["a/1.jpg", "b/2.jpg"]
    text = b'{"petrel_manifest": 1}\n\n{"key": "k", "size": 3, "label": 7}\n'
    assert manifest.decode(text).entries == (ManifestEntry("k", 3),)


@pytest.mark.parametrize("data, message", [
    (b'{"petrel_manifest": 2}\n', "version 2"),
    (b'{"format": 1}\n', "no 'petrel_manifest'"),
    (b'{"petrel_manifest": 1}\n{"key": ""}\n', "'key'"),
    (b'{"petrel_manifest": 1}\n{"key": "a", "size": -1}\n', "'size'"),
    (b'{"petrel_manifest": 1}\n{"key": "a", "size": true}\n', "'size'"),
    (b'{"petrel_manifest": 1}\n[1]\n', "not a JSON object"),
    (b'{"petrel_manifest": 1}\n{"key": \n', "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_bad_manifests(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        manifest.decode(data)


def test_encode_refuses_the_version_field() -> None:
    with pytest.raises(ValueError):
        manifest.encode(["a"], petrel_manifest=2)
