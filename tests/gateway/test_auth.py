"""SigV4 verification (petrel_gateway.auth) against real botocore signers and the AWS
documentation's published examples. No network: boto3 requests are captured at
`before-send` and handed to the verifier as the gateway would see them."""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from petrel.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    PetrelError,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)
from petrel_gateway.auth import (
    EMPTY_SHA256,
    AuthLimits,
    Credentials,
    PayloadMode,
    SigningKeyCache,
    SigV4Verifier,
    canonical_query,
    canonical_uri,
    derive_signing_key,
    parse_query,
)

AKID, SECRET = "AKIDPETREL", "petrel/secret+key=="
OTHER_AKID, OTHER_SECRET = "AKIDOTHER", "other-secret"
CREDS = Credentials.of({AKID: SECRET, OTHER_AKID: OTHER_SECRET})
ENDPOINT = "http://127.0.0.1:9"

KEYS = [
    "plain.txt",
    "dir/with space/file name.txt",
    "unicode/日本語/ключ-ü.bin",
    "special/!$&'()*+,;=:@~%[]^`{}|.txt",
    "double//slash/./dot/../seg",
    "tab\tand\u00a0nbsp",
]

# ----- the AWS documentation's examples (sig-v4-header-based-auth, query auth) ---------
DOC_AKID, DOC_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))


def _doc_verifier(now: float = DOC_NOW) -> SigV4Verifier:
    return SigV4Verifier(
        Credentials.of({DOC_AKID: DOC_SECRET}), region="us-east-1", clock=lambda: now
    )


def test_aws_doc_get_object_example() -> None:
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            "aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        ),
    }
    result = _doc_verifier().verify("GET", "/test.txt", "", headers)
    assert result.access_key_id == DOC_AKID
    assert result.payload_mode is PayloadMode.SHA256
    assert result.payload_sha256 == EMPTY_SHA256
    with pytest.raises(SignatureDoesNotMatch):
        _doc_verifier().verify("GET", "/test.txt", "", {**headers, "Range": "bytes=0-10"})


DOC_PRESIGN_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
    "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
    "X-Amz-SignedHeaders=host&X-Amz-Signature="
    "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_aws_doc_presigned_url_example() -> None:
    host = {"Host": "examplebucket.s3.amazonaws.com"}
    result = _doc_verifier().verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert result.presigned and result.payload_mode is PayloadMode.UNSIGNED
    # Valid for exactly X-Amz-Expires seconds.
    _doc_verifier(DOC_NOW + 86400).verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    with pytest.raises(AccessDenied, match="expired"):
        _doc_verifier(DOC_NOW + 86401).verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)


# ----- boto3 requests, captured before they are sent ------------------------------------
@dataclass(frozen=True)
class Wire:
    """A request as the gateway sees it."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes

    def replace_header(self, name: str, value: str) -> Wire:
        kept = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return Wire(self.method, self.raw_path, self.raw_query, [*kept, (name, value)], self.body)


class _EmptyRaw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def _to_wire(request: Any) -> Wire:
    url = urlsplit(request.url)
    headers = [
        (name, value.decode() if isinstance(value, bytes) else str(value))
        for name, value in request.headers.items()
    ]
    if not any(name.lower() == "host" for name, _ in headers):
        headers.append(("Host", url.netloc))  # what the HTTP client adds
    body = request.body
    data = body.read() if hasattr(body, "read") else (body or b"")
    return Wire(request.method, url.path, url.query, headers, data)


@pytest.fixture
def captured_s3() -> Callable[..., tuple[Any, list[Wire]]]:
    """A boto3 client factory; the list it returns fills with every request made."""

    def make(
        akid: str = AKID, secret: str = SECRET, endpoint: str = ENDPOINT
    ) -> tuple[Any, list[Wire]]:
        sent: list[Wire] = []

        def before_send(request: Any, **_: Any) -> AWSResponse:
            sent.append(_to_wire(request))
            return AWSResponse(request.url, 200, {}, _EmptyRaw())

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
            ),
        )
        client.meta.events.register("before-send.s3.*", before_send)
        return client, sent

    return make


def _verifier(now: float | None = None, **kwargs: Any) -> SigV4Verifier:
    clock = time.time if now is None else (lambda: now)
    return SigV4Verifier(CREDS, clock=clock, **kwargs)


def _verify(wire: Wire, verifier: SigV4Verifier | None = None) -> Any:
    v = verifier or _verifier()
    return v.verify(wire.method, wire.raw_path, wire.raw_query, wire.headers)


def _signed_at(wire: Wire) -> float:
    stamp = dict((k.lower(), v) for k, v in wire.headers).get("x-amz-date")
    if stamp is None:
        stamp = dict(parse_query(wire.raw_query))["X-Amz-Date"]
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


@pytest.mark.parametrize("key", KEYS)
def test_boto3_put_object_verifies(captured_s3: Any, key: str) -> None:
    client, sent = captured_s3()
    client.put_object(Bucket="bkt", Key=key, Body=b"hello", Metadata={"note": "  a   b "})
    result = _verify(sent[0])
    assert result.access_key_id == AKID and not result.presigned
    assert result.payload_mode is PayloadMode.SHA256
    assert result.payload_sha256 == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("key", KEYS)
def test_boto3_query_parameters_verify(captured_s3: Any, key: str) -> None:
    client, sent = captured_s3()
    client.list_objects_v2(Bucket="bkt", Prefix=key, StartAfter="x=y&z+w", MaxKeys=7)
    client.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": key}]})
    client.get_object_acl(Bucket="bkt", Key=key)  # an empty-valued parameter: ?acl
    for wire in sent:
        _verify(wire)


def test_wrong_secret_and_unknown_key(captured_s3: Any) -> None:
    client, sent = captured_s3(secret="not-the-secret")
    client.head_object(Bucket="bkt", Key="k")
    with pytest.raises(SignatureDoesNotMatch) as info:
        _verify(sent[0])
    assert (info.value.code, info.value.status) == ("SignatureDoesNotMatch", 403)
    client, sent = captured_s3(akid="AKIDUNKNOWN")
    client.head_object(Bucket="bkt", Key="k")
    with pytest.raises(InvalidAccessKeyId) as unknown:
        _verify(sent[0])
    assert unknown.value.status == 403


def test_second_key_pair_verifies(captured_s3: Any) -> None:
    client, sent = captured_s3(akid=OTHER_AKID, secret=OTHER_SECRET)
    client.head_object(Bucket="bkt", Key="k")
    assert _verify(sent[0]).access_key_id == OTHER_AKID


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: w.replace_header("x-amz-meta-note", "changed"),
        lambda w: w.replace_header("x-amz-content-sha256", EMPTY_SHA256),
        lambda w: w.replace_header("Host", "evil.example:9"),
        lambda w: Wire(w.method, w.raw_path + "x", w.raw_query, w.headers, w.body),
        lambda w: Wire(w.method, w.raw_path.replace("/k", "/K"), w.raw_query, w.headers, b""),
        lambda w: Wire("DELETE", w.raw_path, w.raw_query, w.headers, w.body),
        lambda w: Wire(w.method, w.raw_path, "acl", w.headers, w.body),
    ],
)
def test_tampered_header_path_query_method(
    captured_s3: Any, tamper: Callable[[Wire], Wire]
) -> None:
    client, sent = captured_s3()
    client.put_object(Bucket="bkt", Key="k/v", Body=b"x", Metadata={"note": "n"})
    _verify(sent[0])
    with pytest.raises(SignatureDoesNotMatch):
        _verify(tamper(sent[0]))


def test_unsigned_amz_header_is_refused(captured_s3: Any) -> None:
    client, sent = captured_s3()
    client.head_object(Bucket="bkt", Key="k")
    with pytest.raises(AccessDenied, match="not signed: x-amz-meta-extra"):
        _verify(sent[0].replace_header("x-amz-meta-extra", "1"))


def test_clock_skew(captured_s3: Any) -> None:
    client, sent = captured_s3()
    client.head_object(Bucket="bkt", Key="k")
    signed_at = _signed_at(sent[0])
    for offset_s in (-14 * 60, 14 * 60):
        _verify(sent[0], _verifier(signed_at + offset_s))
    for offset_s in (-16 * 60, 16 * 60):
        with pytest.raises(RequestTimeTooSkewed) as info:
            _verify(sent[0], _verifier(signed_at + offset_s))
        assert info.value.status == 403
    _verify(sent[0], _verifier(signed_at + 16 * 60, limits=AuthLimits(clock_skew_s_max=3600)))


@pytest.mark.parametrize("key", KEYS)
def test_boto3_presigned_urls(captured_s3: Any, key: str) -> None:
    client, _ = captured_s3()
    for method, params in (
        ("get_object", {"Bucket": "bkt", "Key": key, "ResponseContentType": "a/b c"}),
        ("put_object", {"Bucket": "bkt", "Key": key}),
    ):
        url = urlsplit(client.generate_presigned_url(method, Params=params, ExpiresIn=300))
        http_method = "GET" if method == "get_object" else "PUT"
        wire = Wire(http_method, url.path, url.query, [("Host", url.netloc)], b"")
        result = _verify(wire)
        assert result.presigned and result.payload_mode is PayloadMode.UNSIGNED
        signed_at = _signed_at(wire)
        _verify(wire, _verifier(signed_at + 300))
        with pytest.raises(AccessDenied, match="expired"):
            _verify(wire, _verifier(signed_at + 301))
        with pytest.raises(AccessDenied, match="not valid yet"):
            _verify(wire, _verifier(signed_at - 3600))
        tampered = url.query.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
        with pytest.raises(SignatureDoesNotMatch):
            _verify(Wire(http_method, url.path, tampered, wire.headers, b""))
        with pytest.raises(SignatureDoesNotMatch):
            _verify(Wire(http_method, url.path + "2", url.query, wire.headers, b""))


def test_presign_expiry_bounds(captured_s3: Any) -> None:
    client, _ = captured_s3()
    url = urlsplit(client.generate_presigned_url("get_object", {"Bucket": "b", "Key": "k"}))
    for expires, ok in (("604800", True), ("604801", False), ("-1", False), ("1e3", False)):
        query = "&".join(
            f"X-Amz-Expires={expires}" if part.startswith("X-Amz-Expires=") else part
            for part in url.query.split("&")
        )
        wire = Wire("GET", url.path, query, [("Host", url.netloc)], b"")
        if ok:  # in range: the (unchanged) signature is what fails
            with pytest.raises(SignatureDoesNotMatch):
                _verify(wire)
        else:
            with pytest.raises(AuthorizationQueryParametersError) as info:
                _verify(wire)
            assert info.value.status == 400


def test_presign_with_botocore_query_auth_and_extra_signed_header() -> None:
    request = AWSRequest(
        "GET", f"{ENDPOINT}/bkt/k%20ey?versionId=3&x-id=GetObject", headers={"x-amz-meta-a": "1"}
    )
    S3SigV4QueryAuth(BotoCredentials(AKID, SECRET), "s3", "us-east-1", expires=60).add_auth(request)
    wire = _to_wire(request.prepare())
    assert "x-amz-meta-a" in dict(parse_query(wire.raw_query))["X-Amz-SignedHeaders"]
    assert _verify(wire).presigned
    with pytest.raises(SignatureDoesNotMatch):
        _verify(wire.replace_header("x-amz-meta-a", "2"))


def test_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/bkt/k", headers={"Date": "placeholder"})
    S3SigV4Auth(BotoCredentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    wire = _to_wire(request.prepare())
    assert not any(name.lower() == "x-amz-date" for name, _ in wire.headers)
    assert _verify(wire).access_key_id == AKID


def test_repeated_and_folded_header_values() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/bkt/k", headers={"x-amz-meta-a": "  one   two  "})
    S3SigV4Auth(BotoCredentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    wire = _to_wire(request.prepare())
    # Trimmed and collapsed on both sides: the wire form may differ in spacing only.
    _verify(wire.replace_header("x-amz-meta-a", "one two"))
    with pytest.raises(SignatureDoesNotMatch):
        _verify(wire.replace_header("x-amz-meta-a", "onetwo"))


def test_region_is_enforced_when_configured(captured_s3: Any) -> None:
    client, sent = captured_s3()
    client.head_object(Bucket="bkt", Key="k")
    _verify(sent[0], _verifier(region="us-east-1"))
    with pytest.raises(AuthorizationHeaderMalformed, match="region"):
        _verify(sent[0], _verifier(region="eu-west-1"))


# ----- refusals that never reach the signature ----------------------------------------
def _auth_header(credential: str, signed: str = "host;x-amz-date", sig: str = "0" * 64) -> str:
    return f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={sig}"


GOOD_CREDENTIAL = f"{AKID}/20130524/us-east-1/s3/aws4_request"


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "AWS4-HMAC-SHA512 Credential=x, SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=a/b/c",
        _auth_header(f"{AKID}/20130524/us-east-1/s3"),
        _auth_header(f"{AKID}/2013052/us-east-1/s3/aws4_request"),
        _auth_header(f"{AKID}/20130524/us-east-1/ec2/aws4_request"),
        _auth_header(f"{AKID}/20130524/us-east-1/s3/aws5_request"),
        _auth_header(f"{AKID}/20130525/us-east-1/s3/aws4_request"),  # date != x-amz-date
        _auth_header(GOOD_CREDENTIAL, signed="Host;x-amz-date"),
        _auth_header(GOOD_CREDENTIAL, signed="host;host"),
        _auth_header(GOOD_CREDENTIAL, signed="host;;x"),
        _auth_header(GOOD_CREDENTIAL, sig="0" * 63),
        _auth_header(GOOD_CREDENTIAL, sig="G" * 64),
        _auth_header(GOOD_CREDENTIAL) + ", Extra=1",
        _auth_header(GOOD_CREDENTIAL).replace(", Signature", ", Credential"),
    ],
)
def test_malformed_authorization_header(authorization: str) -> None:
    headers = {
        "Host": "h",
        "x-amz-date": "20130524T000000Z",
        "x-amz-content-sha256": EMPTY_SHA256,
        "Authorization": authorization,
    }
    with pytest.raises(AuthorizationHeaderMalformed) as info:
        _verifier(DOC_NOW).verify("GET", "/", "", headers)
    assert (info.value.code, info.value.status) == ("AuthorizationHeaderMalformed", 400)


def test_other_refusals() -> None:
    v = _verifier(DOC_NOW)
    base = {"Host": "h", "x-amz-date": "20130524T000000Z", "x-amz-content-sha256": EMPTY_SHA256}
    with pytest.raises(AccessDenied, match="Anonymous"):
        v.verify("GET", "/", "", base)
    with pytest.raises(InvalidRequest, match="AWS4-HMAC-SHA256"):
        v.verify("GET", "/", "", {**base, "Authorization": "AWS AKID:c2ln"})
    with pytest.raises(InvalidRequest, match="AWS4-HMAC-SHA256"):
        v.verify("GET", "/", "AWSAccessKeyId=a&Signature=b&Expires=1", base)
    with pytest.raises(InvalidArgument, match="one auth mechanism"):
        v.verify("GET", "/", "X-Amz-Algorithm=x", {**base, "Authorization": "x"})
    with pytest.raises(AuthorizationQueryParametersError, match="requires"):
        v.verify("GET", "/", "X-Amz-Algorithm=AWS4-HMAC-SHA256", base)
    header = {**base, "Authorization": _auth_header(GOOD_CREDENTIAL)}
    with pytest.raises(InvalidAccessKeyId):
        v.verify(
            "GET", "/", "", {**header, "Authorization": _auth_header("NOPE" + GOOD_CREDENTIAL)}
        )
    with pytest.raises(InvalidRequest, match="x-amz-content-sha256"):
        v.verify("GET", "/", "", {k: x for k, x in header.items() if k != "x-amz-content-sha256"})
    with pytest.raises(InvalidArgument, match="x-amz-content-sha256"):
        v.verify("GET", "/", "", {**header, "x-amz-content-sha256": "STREAMING-NONSENSE"})
    with pytest.raises(AccessDenied, match="Date"):
        v.verify("GET", "/", "", {k: x for k, x in header.items() if k != "x-amz-date"})
    with pytest.raises(AccessDenied, match="host"):
        unsigned_host = _auth_header(GOOD_CREDENTIAL, signed="x-amz-date")
        v.verify("GET", "/", "", {**header, "Authorization": unsigned_host})
    with pytest.raises(SignatureDoesNotMatch):
        v.verify("GET", "/", "", header)


# Any code point, lone surrogates included (aiohttp hands over surrogate-escaped bytes).
any_text = st.text(st.characters(exclude_categories=()), max_size=120)
auth_like = st.builds(
    lambda parts: "AWS4-HMAC-SHA256 " + ", ".join(parts),
    st.lists(
        st.sampled_from(["Credential=", "SignedHeaders=", "Signature=", ""]).flatmap(
            lambda name: st.builds(lambda v: name + v, any_text)
        ),
        max_size=4,
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    authorization=st.one_of(any_text, auth_like),
    raw_query=st.one_of(any_text, st.just(DOC_PRESIGN_QUERY)),
    raw_path=any_text,
    amz_date=st.one_of(st.just("20130524T000000Z"), any_text),
    http_date=st.one_of(any_text, st.just("Fri, 24 May 2013 00:00:00 GMT")),
    content_sha256=st.one_of(st.just(EMPTY_SHA256), any_text),
)
def test_arbitrary_input_raises_only_petrel_errors(
    authorization: str,
    raw_query: str,
    raw_path: str,
    amz_date: str,
    http_date: str,
    content_sha256: str,
) -> None:
    headers = [
        ("Host", "h"),
        ("Date", http_date),
        ("x-amz-content-sha256", content_sha256),
        ("x-amz-date", amz_date),
        ("Authorization", authorization),
    ]
    for candidate in (headers, headers[:-1], headers[:-2] + headers[-1:]):
        with pytest.raises(PetrelError):
            _verifier(DOC_NOW).verify("GET", raw_path, raw_query, candidate)


# ----- building blocks ---------------------------------------------------------------------
def test_canonical_forms() -> None:
    assert canonical_uri("") == "/"
    assert canonical_uri("/b/a%20b/%7e+%2B/%E6%97%A5") == "/b/a%20b/~%2B%2B/%E6%97%A5"
    assert canonical_uri("/b/a b(c)") == "/b/a%20b%28c%29"
    assert canonical_query("") == ""
    assert canonical_query("b=2&a=&c&a=1") == "a=&a=1&b=2&c="
    assert canonical_query("p=a+b&q=a%2Bb&r=%7e") == "p=a%20b&q=a%2Bb&r=~"
    assert canonical_query("X-Amz-Signature=s&a=1", drop="X-Amz-Signature") == "a=1"
    assert parse_query("k=a+b&k2=%E6%97%A5&flag") == [("k", "a b"), ("k2", "日"), ("flag", "")]


def test_signing_key_cache_is_bounded_and_counts() -> None:
    cache = SigningKeyCache(entries_max=2)
    first = cache.get("s", "20130524", "us-east-1")
    assert first == derive_signing_key("s", "20130524", "us-east-1")
    assert cache.get("s", "20130524", "us-east-1") is first
    cache.get("s", "20130525", "us-east-1")
    cache.get("s", "20130526", "us-east-1")
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)


def test_credentials_validation_and_repr() -> None:
    with pytest.raises(ValueError):
        Credentials.of({"bad/id": "s"})
    with pytest.raises(ValueError):
        Credentials.of({"id": ""})
    assert "s3cr3t" not in repr(Credentials.of({"id": "s3cr3t"}))
    with pytest.raises(InvalidAccessKeyId):
        CREDS.secret_for("nobody")
    with pytest.raises(ValueError):
        AuthLimits(presign_expires_s_max=8 * 24 * 3600)


@given(st.lists(st.sampled_from(["%2F", "%2f", "%41", "%C3%A9", "%", "%4", "a", "/", "-",
                                 "%25", "%2F%2F"]), max_size=12).map("".join))
def test_parse_query_unquotes_as_urllib_does(text: str) -> None:
    """The %2F shortcut in parse_query decodes exactly as urllib's unquote."""
    from urllib.parse import unquote

    assert parse_query(f"n={text}") == [("n", unquote(text, errors="surrogateescape"))]


# ----- presigned requests verified once (VerifiedRequests) ---------------------------------
class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _doc_presigned(clock: _Clock, **limits: Any) -> SigV4Verifier:
    return SigV4Verifier(Credentials.of({DOC_AKID: DOC_SECRET}), region="us-east-1",
                         clock=clock, limits=AuthLimits(**limits))


def test_a_presigned_url_sent_again_is_remembered_but_still_expires() -> None:
    clock = _Clock(DOC_NOW)
    verifier = _doc_presigned(clock)
    host = {"Host": "examplebucket.s3.amazonaws.com"}
    verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert len(verifier.verified) == 0  # sent once: only noted
    second = verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert len(verifier.verified) == 1 and verifier.verified.hits == 0
    assert verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, dict(host)) is second
    assert (verifier.verified.hits, verifier.verified.misses) == (1, 2)
    clock.now = DOC_NOW + 86401  # the remembered URL is checked against the clock
    with pytest.raises(AccessDenied, match="expired"):
        verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    clock.now = DOC_NOW - 16 * 60
    with pytest.raises(AccessDenied, match="not valid yet"):
        verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert verifier.verified.hits == 3


def _remembered(verifier: SigV4Verifier, method: str, path: str, query: str,
                headers: dict[str, str]) -> None:
    for _ in range(2):
        verifier.verify(method, path, query, headers)


def test_a_remembered_url_with_any_other_byte_is_verified_in_full() -> None:
    verifier = _doc_presigned(_Clock(DOC_NOW))
    host = {"Host": "examplebucket.s3.amazonaws.com"}
    _remembered(verifier, "GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify("HEAD", "/test.txt", DOC_PRESIGN_QUERY, host)
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY,
                        {"Host": "otherbucket.s3.amazonaws.com"})
    with pytest.raises(AccessDenied, match="not signed"):
        verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY,
                        {**host, "x-amz-meta-unsigned": "1"})
    tampered = DOC_PRESIGN_QUERY[:-1] + ("5" if DOC_PRESIGN_QUERY[-1] != "5" else "6")
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify("GET", "/test.txt", tampered, host)
    assert len(verifier.verified) == 1  # refusals are never remembered
    # The remembered one still verifies.
    verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert verifier.verified.hits == 1


def test_new_credentials_forget_what_the_old_ones_verified() -> None:
    verifier = _doc_presigned(_Clock(DOC_NOW))
    host = {"Host": "examplebucket.s3.amazonaws.com"}
    _remembered(verifier, "GET", "/test.txt", DOC_PRESIGN_QUERY, host)
    assert len(verifier.verified) == 1
    verifier.set_credentials(Credentials.of({AKID: SECRET}))
    with pytest.raises(InvalidAccessKeyId):
        verifier.verify("GET", "/test.txt", DOC_PRESIGN_QUERY, host)


def test_only_presigned_reads_sent_again_are_remembered(captured_s3: Any) -> None:
    client, wires = captured_s3()
    client.get_object(Bucket="b", Key="k")
    verifier = _verifier(_signed_at(wires[-1]))
    for _ in range(3):
        _verify(wires[-1], verifier)  # header-signed
    put = urlsplit(client.generate_presigned_url("put_object", {"Bucket": "b", "Key": "k"}))
    for _ in range(3):
        verifier.verify("PUT", put.path, put.query, {"host": put.netloc})
    assert len(verifier.verified) == 0 and verifier.verified.hits == 0
    head = urlsplit(client.generate_presigned_url("head_object", {"Bucket": "b", "Key": "k"}))
    _remembered(verifier, "HEAD", head.path, head.query, {"host": head.netloc})
    assert len(verifier.verified) == 1


def test_remembered_requests_are_bounded(captured_s3: Any) -> None:
    client, _ = captured_s3()
    verifier = _verifier(time.time(), limits=AuthLimits(verified_requests_max=3))
    for i in range(10):
        url = urlsplit(client.generate_presigned_url("get_object", {"Bucket": "b", "Key": f"k{i}"}))
        _remembered(verifier, "GET", url.path, url.query, {"host": url.netloc})
    assert len(verifier.verified) == 3
    off = _verifier(time.time(), limits=AuthLimits(verified_requests_max=0))
    for _ in range(3):
        off.verify("GET", url.path, url.query, {"host": url.netloc})
    assert len(off.verified) == 0 and off.verified.hits == 0
    with pytest.raises(ValueError):
        AuthLimits(verified_requests_max=-1)


# ----- the presigned fast path agrees with the general path --------------------------------
class _GeneralOnly(SigV4Verifier):
    """Every request through the general path (the fast path never accepts)."""

    def _presigned(self, *args: Any) -> None:
        return None


def _outcome(verifier: SigV4Verifier, method: str, path: str, query: str,
             headers: list[tuple[str, str]]) -> object:
    try:
        return verifier.verify(method, path, query, headers)
    except PetrelError as exc:
        return type(exc)


_PARAMS = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
           "X-Amz-SignedHeaders", "X-Amz-Signature"]
_MUTATIONS = ["none", "flip-signature", "reverse", "lower-names", "encode-dash", "region",
              "algorithm", "empty-part", "no-equals", "plus", "signed-headers-case",
              *(f"drop {name}" for name in _PARAMS), *(f"twice {name}" for name in _PARAMS)]


def _mutate(query: str, mutation: str) -> str:
    parts = query.split("&")
    kind, _, name = mutation.partition(" ")
    if kind == "drop":
        return "&".join(p for p in parts if not p.startswith(name + "="))
    if kind == "twice":
        return "&".join(parts + [p for p in parts if p.startswith(name + "=")])
    edits: dict[str, Callable[[], str]] = {
        "none": lambda: query,
        "flip-signature": lambda: query[:-1] + ("0" if query[-1] != "0" else "1"),
        "reverse": lambda: "&".join(reversed(parts)),
        "lower-names": lambda: query.replace("X-Amz-Date=", "x-amz-date="),
        "encode-dash": lambda: query.replace("aws4_request", "aws4%5Frequest"),
        "region": lambda: query.replace("us-east-1", "eu-west-1"),
        "algorithm": lambda: query.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        "empty-part": lambda: query + "&",
        "no-equals": lambda: query + "&flag",
        "plus": lambda: query.replace("X-Amz-Expires=", "X-Amz-Expires=+"),
        "signed-headers-case": lambda: query.replace("SignedHeaders=host", "SignedHeaders=Host"),
    }
    return edits[kind]()


_HEADER_SETS = {
    "host": lambda host: [("Host", host)],
    "host lower": lambda host: [("host", host)],
    "host spaced": lambda host: [("Host", f"  {host} ")],
    "host twice": lambda host: [("Host", host), ("host", host)],
    "other host": lambda host: [("Host", "other.example")],
    "no host": lambda host: [("Range", "bytes=0-1")],
    "unsigned x-amz": lambda host: [("Host", host), ("x-amz-meta-a", "1")],
    "content sha": lambda host: [("Host", host), ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")],
    "authorization": lambda host: [("Host", host), ("Authorization", "AWS4-HMAC-SHA256 x")],
    "plain extras": lambda host: [("Host", host), ("Range", "bytes=0-9"),
                                  ("User-Agent", "x"), ("Content-Length", "3")],
}


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12)),
    signed_method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    sent_method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "same"]),
    extra_query=st.sampled_from(["", "versionId=3", "x-id=GetObject", "a%41=1",
                                 "response-content-type=a%2Fb", "X-Amz-Security-Token=t",
                                 "X-Amz-Content-Sha256=UNSIGNED-PAYLOAD", "empty="]),
    expires=st.sampled_from([1, 300, 604800]),
    clock_offset=st.sampled_from([-3600, -899, 0, 1, 299, 301, 604801]),
    headers=st.sampled_from(sorted(_HEADER_SETS)),
    region=st.sampled_from([None, "us-east-1", "eu-west-1"]),
)
def test_presigned_fast_path_agrees_with_the_general_path(
    key: str, signed_method: str, sent_method: str, extra_query: str, expires: int,
    clock_offset: int, headers: str, region: str | None,
) -> None:
    """Whatever the request, verify() answers what the general path alone answers: the
    same result, or the same error. A fast path that accepted more would show here."""
    from urllib.parse import quote

    host = "127.0.0.1:9000"
    url = f"http://{host}/bkt/{quote(key, safe='/~')}" + (f"?{extra_query}" if extra_query else "")
    request = AWSRequest(signed_method, url)
    S3SigV4QueryAuth(BotoCredentials(AKID, SECRET), "s3", "us-east-1",
                     expires=expires).add_auth(request)
    wire = _to_wire(request.prepare())
    now = _signed_at(wire) + clock_offset
    method = signed_method if sent_method == "same" else sent_method
    sent_headers = _HEADER_SETS[headers](host)
    fast = SigV4Verifier(CREDS, region=region, clock=lambda: now)
    general = _GeneralOnly(CREDS, region=region, clock=lambda: now)
    for mutation in _MUTATIONS:
        query = _mutate(wire.raw_query, mutation)
        for _ in range(3):  # the third time, a remembered request where one may be
            expected = _outcome(general, method, wire.raw_path, query, sent_headers)
            assert _outcome(fast, method, wire.raw_path, query, sent_headers) == expected, \
                mutation


def test_the_fast_path_takes_sdk_presigned_urls(captured_s3: Any) -> None:
    """What the differential test above relies on: the fast path does accept the
    presigned URLs SDKs make (else it would agree by never answering)."""
    client, _ = captured_s3()
    verifier = _verifier(time.time())
    for method, operation in (("GET", "get_object"), ("PUT", "put_object"),
                              ("HEAD", "head_object")):
        for key in ("plain.txt", "dir/with space/ü.bin"):
            url = urlsplit(client.generate_presigned_url(operation, {"Bucket": "b", "Key": key}))
            fast = verifier._presigned(method, url.path, url.query, [("Host", url.netloc)])
            assert fast is not None, (method, key)
            assert fast[2] == _verify(Wire(method, url.path, url.query,
                                           [("Host", url.netloc)], b""), _GeneralOnly(CREDS))
