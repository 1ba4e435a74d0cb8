"""AWS Signature Version 4 for S3: the primitives both sides compute, and the signer.

The gateway verifies (`petrel_gateway.auth.SigV4Verifier`) and `petrel.Client` signs
with the same canonicalisation code, so the two cannot drift. Pure code: no HTTP library.

Canonicalisation follows S3, not the generic SigV4 rules: the path is percent-decoded and
encoded once (never twice, never dot-normalised); query names and values are decoded
(`+` is a space, as aiohttp decodes it for the handlers), encoded, and sorted, with
`name=` for empty values; header values are trimmed with inner whitespace runs collapsed
(as botocore does); the payload hash is the x-amz-content-sha256 value.

The signer (`Signer.sign`, `Signer.presign`) produces what botocore's `S3SigV4Auth` and
`S3SigV4QueryAuth` produce for the same request, time and headers (tests/client checks
it against botocore).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

from petrel.errors import InvalidRequest, SignatureDoesNotMatch

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_REGION = "us-east-1"
# S3: a presigned URL is valid for at most 7 days.
PRESIGN_EXPIRES_S_MAX = 7 * 24 * 3600
# Headers a signer leaves out of SignedHeaders: hop-by-hop headers and those proxies and
# HTTP libraries rewrite (botocore's SIGNED_HEADERS_BLACKLIST).
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
    "proxy-authorization", "te", "traceparent", "tracestate", "trailer",
    "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id", "authorization",
})


# ----- signing primitives ------------------------------------------------------------------
def _hmac(key: bytes, message: str | bytes) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return hmac.new(key, data, hashlib.sha256).digest()


def derive_signing_key(secret: str, day: str, region: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), "s3"), "aws4_request")."""
    key = _hmac(("AWS4" + secret).encode(), day)
    for part in (region, SERVICE, TERMINATOR):
        key = _hmac(key, part)
    return key


def sign(signing_key: bytes, string_to_sign: str) -> str:
    return hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def signatures_equal(expected: str, claimed: str) -> bool:
    """Constant-time comparison of two hex signatures."""
    return hmac.compare_digest(expected.encode(), claimed.encode())


def credential_scope(day: str, region: str) -> str:
    """e.g. "20130524/us-east-1/s3/aws4_request"."""
    return f"{day}/{region}/{SERVICE}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical: bytes) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical).hexdigest()))


# ----- canonical request -------------------------------------------------------------------
def _wire_bytes(text: str) -> bytes:
    # aiohttp decodes header and URL bytes as UTF-8 with surrogateescape; this undoes it.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no wire byte decodes to
        raise InvalidRequest("The request contains characters that are not valid.") from None


_PLAIN = {"": re.compile(rb"[A-Za-z0-9._~-]*"), "/": re.compile(rb"[A-Za-z0-9._~/-]*")}
# A wire path of unreserved characters and '/' only is its own canonical URI.
PLAIN_PATH = re.compile(r"[A-Za-z0-9._~/-]*")


def _s3_encode(raw: bytes, safe: str) -> str:
    # RFC 3986 unreserved characters stay, everything else is %XX with uppercase hex.
    # Most names and values need no escaping: one regex match instead of quoting.
    plain = _PLAIN.get(safe)
    if plain is not None and plain.fullmatch(raw):
        return raw.decode("ascii")
    return quote_from_bytes(raw, safe=safe)


def canonical_uri(raw_path: str) -> str:
    """S3's canonical URI: decode once, encode once, keep '/' (no dot-segment folding)."""
    if not raw_path:
        return "/"
    return _s3_encode(unquote_to_bytes(_wire_bytes(raw_path)), safe="/")


def _unquote_part(text: str) -> bytes:
    if "%" not in text and "+" not in text:  # most names and many values: no decoding
        return _wire_bytes(text)
    return unquote_to_bytes(_wire_bytes(text.replace("+", " ")))


@functools.lru_cache(maxsize=64)
def _query_pairs_cached(raw_query: str) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            if part.isascii() and "%" not in part and "+" not in part:
                pairs.append((name.encode("ascii"), value.encode("ascii")))
            else:
                pairs.append((_unquote_part(name), _unquote_part(value)))
    return tuple(pairs)


def _query_pairs(raw_query: str) -> tuple[tuple[bytes, bytes], ...]:
    # verify() parses the same query twice (claim, canonical query): the small cache
    # makes the second parse free; entries are immutable tuples.
    return _query_pairs_cached(raw_query)


def _unquote_ascii(text: str) -> str:
    """`unquote` of ASCII text. The one escape presigned URLs are full of, %2F in the
    credential scope, is replaced directly: urllib's unquote costs microseconds."""
    if "%" not in text:
        return text
    plain = text.replace("%2F", "/")
    if "%" not in plain:
        return plain
    return unquote(text, errors="surrogateescape")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in wire order, as the signature covers them."""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if part.isascii() and "+" not in part:
            # Most pairs: nothing or only %XX to decode (str-level unquote is the same
            # as decoding the bytes for ASCII input, and cheaper).
            pairs.append((_unquote_ascii(name), _unquote_ascii(value)))
        else:
            pairs.append((_unquote_part(name).decode("utf-8", "surrogateescape"),
                          _unquote_part(value).decode("utf-8", "surrogateescape")))
    return pairs


# A query whose every name and value is already in canonical form (unreserved
# characters, and %XX with uppercase hex for anything else), as SDKs send them: only
# these characters, no '%' without two uppercase hex digits after it, no second '=' in
# a pair, and no %XX that spells an unreserved character (canonical form writes it
# plainly). Simple scans: a regex with alternation at every character costs more.
_QUERY_CHARS = re.compile(r"[A-Za-z0-9._~%=&-]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-F]{2})")
_SECOND_EQUALS = re.compile(r"=[^&]*=")
_ENCODED_UNRESERVED = re.compile(r"%(?:2[DE]|3[0-9]|4[1-9A-F]|5[0-9AF]|6[1-9A-F]|7[0-9AE])")


def is_canonical_query(raw_query: str) -> bool:
    """Every name and value of `raw_query` is already in canonical form: its canonical
    query string is its own pairs sorted (`canonical_query`)."""
    return _QUERY_CHARS.fullmatch(raw_query) is not None and \
        not _BAD_PERCENT.search(raw_query) and not _SECOND_EQUALS.search(raw_query) and \
        not _ENCODED_UNRESERVED.search(raw_query)


def pair_order(part: str) -> str:
    # Sorting "name=value" strings as (name, value) pairs: '=' becomes a character
    # below every character a canonical name may hold.
    return part.replace("=", "\x00", 1)


def canonical_query(raw_query: str, *, drop: str | None = None) -> str:
    """Sorted "name=value" pairs joined by '&'; `drop` names a parameter left out.

    A query already in canonical form (what SDKs and presigned URLs send) is sorted as
    it is, without decoding and re-encoding each name and value."""
    if is_canonical_query(raw_query):
        parts = [part if "=" in part else part + "=" for part in raw_query.split("&") if part]
        if drop is not None:
            dropped = drop + "="
            parts = [part for part in parts if not part.startswith(dropped)]
        parts.sort(key=pair_order)
        return "&".join(parts)
    return canonical_query_decoded(raw_query, drop=drop)


def canonical_query_decoded(raw_query: str, *, drop: str | None = None) -> str:
    """canonical_query the long way: every name and value decoded, then encoded."""
    encoded = sorted(
        (_s3_encode(name, safe=""), _s3_encode(value, safe=""))
        for name, value in _query_pairs(raw_query)
        if drop is None or name != drop.encode()
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def collect_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Lowercase name -> values in arrival order. Accepts a multidict's `.items()` (or the
    multidict itself) so repeated headers are all seen."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    collected: dict[str, list[str]] = {}
    for name, value in pairs:
        collected.setdefault(name.lower(), []).append(value)
    return collected


def _canonical_header_value(values: list[str]) -> str:
    return ",".join(" ".join(value.split()) for value in values)


def canonical_request(
    method: str,
    raw_path: str,
    canonical_query_string: str,
    headers: dict[str, list[str]],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> bytes:
    """Raises SignatureDoesNotMatch when a signed header is not in `headers`."""
    lines = [method.upper(), canonical_uri(raw_path), canonical_query_string]
    for name in signed_headers:
        values = headers.get(name)
        if values is None:
            raise SignatureDoesNotMatch(f"Signed header {name!r} is not present.")
        lines.append(f"{name}:{_canonical_header_value(values)}")
    lines += ["", ";".join(signed_headers), payload_hash]
    return _wire_bytes("\n".join(lines))


# ----- building request targets (client side) ---------------------------------------------
def encode_path(path: str) -> str:
    """A decoded path ("/bucket/a b/ü") as it goes on the wire: every byte but RFC 3986
    unreserved characters and '/' percent-encoded, so it is its own canonical URI."""
    return _s3_encode(path.encode("utf-8"), safe="/")


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """Decoded (name, value) pairs as a wire query string, in the given order."""
    return "&".join(
        f"{_s3_encode(name.encode(), safe='')}={_s3_encode(value.encode(), safe='')}"
        for name, value in params
    )


def _amz_date(now_s: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))


# ----- the signer --------------------------------------------------------------------------
class Signer:
    """Signs S3 requests with one key pair, as botocore's S3SigV4Auth would.

    Holds the signing key of the current day (recomputed when the day changes); safe to
    share between threads (the key slot is replaced whole, never mutated). `clock`
    returns Unix seconds.
    """

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str = DEFAULT_REGION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key_id or not secret_access_key:
            raise ValueError("an access key id and a secret access key are required")
        self.access_key_id = access_key_id
        self._secret = secret_access_key
        self.region = region
        self._clock = clock
        self._day_key: tuple[str, bytes] = ("", b"")

    def __repr__(self) -> str:
        return f"Signer({self.access_key_id!r}, region={self.region!r})"

    def _signing_key(self, day: str) -> bytes:
        cached_day, key = self._day_key
        if cached_day != day:
            key = derive_signing_key(self._secret, day, self.region)
            self._day_key = (day, key)
        return key

    def sign(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        payload_hash: str,
    ) -> dict[str, str]:
        """The headers to send: `headers` (which must include Host) plus X-Amz-Date,
        X-Amz-Content-SHA256 and Authorization. Every given header except hop-by-hop
        ones (`UNSIGNED_HEADERS`) is signed. `raw_path` and `raw_query` are as on the
        wire (see `encode_path`, `encode_query`). Raises ValueError without a Host."""
        amz_date = _amz_date(self._clock())
        out = {name: value for name, value in headers.items()
               if name.lower() not in ("x-amz-date", "x-amz-content-sha256", "authorization")}
        out["X-Amz-Date"] = amz_date
        out["X-Amz-Content-SHA256"] = payload_hash
        header_map = {name.lower(): [value] for name, value in out.items()}
        if "host" not in header_map:
            raise ValueError("a Host header is required to sign a request")
        signed = tuple(sorted(name for name in header_map if name not in UNSIGNED_HEADERS))
        day = amz_date[:8]
        scope = credential_scope(day, self.region)
        canonical = canonical_request(method, raw_path, canonical_query(raw_query),
                                      header_map, signed, payload_hash)
        signature = sign(self._signing_key(day), string_to_sign(amz_date, scope, canonical))
        out["Authorization"] = (
            f"{ALGORITHM} Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}"
        )
        return out

    def presign(
        self,
        method: str,
        host: str,
        raw_path: str,
        raw_query: str = "",
        expires_s: int = 3600,
    ) -> str:
        """The wire query string of a presigned URL for `method` on `raw_path`: the
        request's own `raw_query` followed by the X-Amz-* parameters and the signature.
        Only Host is signed and the payload is unsigned, as botocore presigns S3.
        Raises ValueError for `expires_s` outside 1 .. 7 days."""
        if not 1 <= expires_s <= PRESIGN_EXPIRES_S_MAX:
            raise ValueError(f"expires_s={expires_s} outside [1, {PRESIGN_EXPIRES_S_MAX}]")
        amz_date = _amz_date(self._clock())
        day = amz_date[:8]
        scope = credential_scope(day, self.region)
        auth_query = encode_query((
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.access_key_id}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires_s)),
            ("X-Amz-SignedHeaders", "host"),
        ))
        query = f"{raw_query}&{auth_query}" if raw_query else auth_query
        canonical = canonical_request(method, raw_path, canonical_query(query),
                                      {"host": [host]}, ("host",), UNSIGNED_PAYLOAD)
        signature = sign(self._signing_key(day), string_to_sign(amz_date, scope, canonical))
        return f"{query}&X-Amz-Signature={signature}"
