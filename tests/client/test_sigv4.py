"""petrel.sigv4's signer gives what botocore's signer gives for the same request, time
and headers, and what the gateway's verifier accepts."""

from __future__ import annotations

import calendar
import datetime
import hashlib
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from petrel.sigv4 import EMPTY_SHA256, Signer, encode_path, encode_query
from petrel_gateway.auth import Credentials, SigV4Verifier

AKID, SECRET = "AKIDPETREL", "petrel/secret+key=="
HOST = "127.0.0.1:9000"
NOW = calendar.timegm((2024, 5, 24, 12, 30, 15))

KEYS = [
    "plain.txt",
    "dir/with space/file name.txt",
    "unicode/日本語/ключ-ü.bin",
    "special/!$&'()*+,;=:@~%[]^`{}|.txt",
    "double//slash/./dot/../seg",
    "tab\tand\u00a0nbsp",
]
QUERIES = [
    [],
    [("batch-get", "")],
    [("list-type", "2"), ("prefix", "a b/ü"), ("delimiter", "/"), ("max-keys", "1000")],
    [("continuation-token", "YS9iL2M="), ("encoding-type", "url"), ("list-type", "2")],
]


def _signer() -> Signer:
    return Signer(AKID, SECRET, clock=lambda: NOW)


@pytest.fixture(autouse=True)
def boto_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore reads the clock itself: fix the one it reads at NOW."""
    import botocore.auth as boto_auth

    real = datetime.datetime

    class Fixed(real):  # type: ignore[misc, valid-type]
        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return real(2024, 5, 24, 12, 30, 15)

        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return real(2024, 5, 24, 12, 30, 15, tzinfo=tz)

    monkeypatch.setattr(boto_auth.datetime, "datetime", Fixed)


def _boto_sign(method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    S3SigV4Auth(BotoCredentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
def test_header_signature_matches_botocore(key: str, query: list[tuple[str, str]],
                                           method: str) -> None:
    body = b"" if method == "GET" else b"payload bytes"
    raw_path = encode_path(f"/bucket/{key}")
    raw_query = encode_query(query)
    url = f"http://{HOST}{raw_path}" + (f"?{raw_query}" if raw_query else "")
    extra = {"Content-Type": "application/x-petrel-batch"} if method == "POST" else {}
    boto = _boto_sign(method, url, dict(extra), body)
    ours = _signer().sign(method, raw_path, raw_query, {"Host": HOST, **extra},
                          hashlib.sha256(body).hexdigest())
    assert ours["X-Amz-Date"] == boto["X-Amz-Date"]
    assert ours["X-Amz-Content-SHA256"] == boto["X-Amz-Content-SHA256"]
    assert ours["Authorization"] == boto["Authorization"]


def test_presigned_url_matches_botocore() -> None:
    for key in KEYS:
        raw_path = encode_path(f"/bucket/{key}")
        request = AWSRequest(method="GET", url=f"http://{HOST}{raw_path}")
        S3SigV4QueryAuth(BotoCredentials(AKID, SECRET), "s3", "us-east-1",
                         expires=600).add_auth(request)
        boto_query = dict(pair.split("=", 1) for pair in urlsplit(request.url).query.split("&"))
        ours = dict(pair.split("=", 1) for pair in
                    _signer().presign("GET", HOST, raw_path, expires_s=600).split("&"))
        assert ours == boto_query


def test_verifier_accepts_what_the_signer_signs() -> None:
    verifier = SigV4Verifier(Credentials.of({AKID: SECRET}), clock=lambda: NOW + 30)
    for key in KEYS:
        for query in QUERIES:
            raw_path, raw_query = encode_path(f"/b/{key}"), encode_query(query)
            headers = _signer().sign("GET", raw_path, raw_query, {"Host": HOST}, EMPTY_SHA256)
            result = verifier.verify("GET", raw_path, raw_query, headers)
            assert result.access_key_id == AKID
            presigned = _signer().presign("PUT", HOST, raw_path, raw_query, expires_s=60)
            assert verifier.verify("PUT", raw_path, presigned, {"Host": HOST}).presigned


def test_signer_refuses_what_it_cannot_sign() -> None:
    with pytest.raises(ValueError, match="Host"):
        _signer().sign("GET", "/b/k", "", {}, EMPTY_SHA256)
    with pytest.raises(ValueError, match="expires_s"):
        _signer().presign("GET", HOST, "/b/k", expires_s=8 * 24 * 3600)
    with pytest.raises(ValueError):
        Signer("", SECRET)


# The canonical query fast path (names and values already canonical) must give exactly
# what decoding and re-encoding every pair gives, for any raw query.
_QUERY_ALPHABET = "aAzZ09-._~%2F3D+=& /é"


@settings(max_examples=500)
@given(st.text(alphabet=_QUERY_ALPHABET, max_size=40),
       st.sampled_from([None, "a", "X-Amz-Signature"]))
def test_canonical_query_fast_path_matches_the_long_way(raw: str, drop: str | None) -> None:
    from petrel.sigv4 import canonical_query, canonical_query_decoded

    assert canonical_query(raw, drop=drop) == canonical_query_decoded(raw, drop=drop)


@pytest.mark.parametrize("raw", [
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261124%2Fus-east-1%2Fs3"
    "%2Faws4_request&X-Amz-Date=20261124T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host",
    "a=b=c", "a-b=1&a=2", "uploads", "prefix=%41%2d&x=%7e", "k=%2f", "list-type=2&prefix=a+b",
])
def test_canonical_query_examples(raw: str) -> None:
    from petrel.sigv4 import canonical_query, canonical_query_decoded

    assert canonical_query(raw) == canonical_query_decoded(raw)
