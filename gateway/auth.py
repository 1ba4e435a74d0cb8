"""AWS Signature Version 4 verification for S3 requests: pure code, no HTTP framework.

The gateway calls `SigV4Verifier.verify(method, raw_path, raw_query, headers)` once per
request, before it reads the body. It returns an `AuthResult` that names the payload mode
the body must then be checked under (`gateway/chunked.py` does that), or raises one of the
`petrel.errors` auth errors:

| condition                                             | error                              |
| ----------------------------------------------------- | ---------------------------------- |
| no Authorization header and no X-Amz-Algorithm query  | AccessDenied                       |
| header auth without a usable date                     | AccessDenied                       |
| malformed Authorization header / credential scope     | AuthorizationHeaderMalformed       |
| malformed or missing presign query parameters         | AuthorizationQueryParametersError  |
| both header and query auth; a SigV2 request           | InvalidArgument / InvalidRequest   |
| access key not in `Credentials`                       | InvalidAccessKeyId                 |
| header auth more than `clock_skew_s_max` off          | RequestTimeTooSkewed               |
| presigned URL past X-Amz-Expires, or dated the future | AccessDenied                       |
| host or an x-amz-* header present but not signed      | AccessDenied                       |
| missing / invalid x-amz-content-sha256 (header auth)  | InvalidRequest / InvalidArgument   |
| signature differs                                     | SignatureDoesNotMatch              |

Canonicalisation follows S3, not the generic SigV4 rules: the path is percent-decoded and
encoded once (never twice, never dot-normalised); query names and values are decoded
(`+` is a space, as aiohttp decodes it for the handlers), encoded, and sorted, with
`name=` for empty values; header values are trimmed with inner whitespace runs collapsed
(as botocore does); the payload hash is the x-amz-content-sha256 value. That code lives
in `petrel.sigv4`, shared with the client's signer; this module parses and checks claims.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType

from petrel import sigv4
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

# The primitives the client signs with live in petrel.sigv4; they are re-exported here
# (`name as name`) for gateway/chunked.py and the tests that import them from this module.
from petrel.sigv4 import ALGORITHM as ALGORITHM
from petrel.sigv4 import EMPTY_SHA256 as EMPTY_SHA256
from petrel.sigv4 import PLAIN_PATH, UNSIGNED_PAYLOAD, is_canonical_query, pair_order
from petrel.sigv4 import SERVICE as SERVICE
from petrel.sigv4 import TERMINATOR as TERMINATOR
from petrel.sigv4 import canonical_query as canonical_query
from petrel.sigv4 import canonical_request as canonical_request
from petrel.sigv4 import canonical_uri as canonical_uri
from petrel.sigv4 import collect_headers as collect_headers
from petrel.sigv4 import derive_signing_key as derive_signing_key
from petrel.sigv4 import parse_query as parse_query
from petrel.sigv4 import sign as sign
from petrel.sigv4 import signatures_equal as signatures_equal
from petrel_gateway.request import is_decimal

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
# Characters that would make the Authorization header or the credential ambiguous.
_ACCESS_KEY_ID = re.compile(r"[^\s/,=]{1,128}")
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


_PRESIGN_NAMES = frozenset(_PRESIGN_PARAMS)


class PayloadMode(enum.Enum):
    """What x-amz-content-sha256 says about the body (values are the wire strings)."""

    SHA256 = "sha256"  # a hex digest of the whole body, in `AuthResult.payload_sha256`
    UNSIGNED = "UNSIGNED-PAYLOAD"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def chunked(self) -> bool:
        """The body is aws-chunked encoded."""
        return self.value.startswith("STREAMING-")

    @property
    def signed_chunks(self) -> bool:
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def trailer(self) -> bool:
        return self.value.endswith("-TRAILER")


# ----- configuration -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthLimits:
    """Bounds on what a signature may claim (S3's own values by default)."""

    # S3: a header-signed request more than 15 minutes off the server clock is refused.
    clock_skew_s_max: int = 15 * 60
    # S3: X-Amz-Expires is at most 7 days.
    presign_expires_s_max: int = 7 * 24 * 3600
    # Derived signing keys kept; one per (secret, day, region) in use.
    signing_key_cache_entries_max: int = 256
    # SignedHeaders entries; botocore signs ~10, a request has at most ~100 headers.
    signed_headers_max: int = 128
    # Presigned requests remembered as verified (VerifiedRequests); 0 turns it off.
    # About 1 KiB each (the URL and headers are the key).
    verified_requests_max: int = 16384

    def __post_init__(self) -> None:
        if not 0 <= self.clock_skew_s_max <= 24 * 3600:
            raise ValueError(f"clock_skew_s_max={self.clock_skew_s_max} outside [0, 86400]")
        if not 1 <= self.presign_expires_s_max <= 7 * 24 * 3600:
            raise ValueError(f"presign_expires_s_max={self.presign_expires_s_max} invalid")
        if self.signing_key_cache_entries_max < 1 or self.signed_headers_max < 1:
            raise ValueError("signing_key_cache_entries_max and signed_headers_max must be >= 1")
        if self.verified_requests_max < 0:
            raise ValueError(f"verified_requests_max={self.verified_requests_max} < 0")


@dataclass(frozen=True, slots=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The access keys the gateway accepts. Immutable; build a new one to rotate keys."""

    pairs: tuple[KeyPair, ...]
    _secrets: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        secrets: dict[str, str] = {}
        for pair in self.pairs:
            if not _ACCESS_KEY_ID.fullmatch(pair.access_key_id):
                raise ValueError(f"invalid access key id {pair.access_key_id!r}")
            if not pair.secret_access_key:
                raise ValueError(f"empty secret for access key id {pair.access_key_id!r}")
            if pair.access_key_id in secrets:
                raise ValueError(f"duplicate access key id {pair.access_key_id!r}")
            secrets[pair.access_key_id] = pair.secret_access_key
        object.__setattr__(self, "_secrets", MappingProxyType(secrets))

    @classmethod
    def of(cls, secrets: Mapping[str, str]) -> Credentials:
        """From {access_key_id: secret_access_key}."""
        return cls(tuple(KeyPair(key, secret) for key, secret in secrets.items()))

    def find_secret(self, access_key_id: str) -> str | None:
        """The secret for `access_key_id`, None if unknown."""
        return self._secrets.get(access_key_id)

    def secret_for(self, access_key_id: str) -> str:
        """The secret for `access_key_id`; raises InvalidAccessKeyId if unknown."""
        secret = self._secrets.get(access_key_id)
        if secret is None:
            raise InvalidAccessKeyId()
        return secret


# ----- results -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChunkSigning:
    """What signed aws-chunked bodies chain from: each chunk signature covers the previous
    one, starting with the request's own (seed) signature."""

    seed_signature: str
    signing_key: bytes = field(repr=False)
    amz_date: str  # the request timestamp, e.g. "20130524T000000Z"
    scope: str  # e.g. "20130524/us-east-1/s3/aws4_request"


@dataclass(frozen=True, slots=True)
class AuthResult:
    access_key_id: str
    region: str
    presigned: bool
    payload_mode: PayloadMode
    # Lowercase hex the body must hash to; set only when payload_mode is SHA256.
    payload_sha256: str | None
    # The chain seed for signed aws-chunked bodies; set whenever the request was signed
    # (the body decoder uses it only in the STREAMING-AWS4-HMAC-SHA256-* modes).
    chunk_signing: ChunkSigning


@dataclass(slots=True)  # not frozen: built on every request, private to this module
class _Claim:
    """What a request says about its own signature, before it is checked."""

    access_key_id: str
    day: str
    region: str
    amz_date: str
    signed_at: float  # Unix seconds
    signed_headers: tuple[str, ...]
    signature: str
    payload_hash: str
    expires_s: int | None  # set for presigned URLs

    @property
    def scope(self) -> str:
        return f"{self.day}/{self.region}/{SERVICE}/{TERMINATOR}"


# ----- chunk signatures (shared with gateway/chunked.py) ---------------------------------
def chunk_signature(signing: ChunkSigning, previous: str, chunk_sha256_hex: str) -> str:
    """The signature of one aws-chunked chunk, chained from `previous`."""
    string_to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256-PAYLOAD",
            signing.amz_date,
            signing.scope,
            previous,
            EMPTY_SHA256,
            chunk_sha256_hex,
        )
    )
    return sign(signing.signing_key, string_to_sign)


def trailer_signature(signing: ChunkSigning, previous: str, canonical_trailers: bytes) -> str:
    """The x-amz-trailer-signature value: covers the trailer lines ("name:value\\n" each)
    and the final chunk's signature."""
    string_to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256-TRAILER",
            signing.amz_date,
            signing.scope,
            previous,
            hashlib.sha256(canonical_trailers).hexdigest(),
        )
    )
    return sign(signing.signing_key, string_to_sign)


class SigningKeyCache:
    """Derived signing keys per (secret, day, region), least recently used evicted first;
    counts its hits and misses. Not shared between verifiers; not thread-safe (the
    gateway verifies on its event loop)."""

    def __init__(self, entries_max: int) -> None:
        assert entries_max >= 1
        self._entries_max = entries_max
        self._keys: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, secret: str, day: str, region: str) -> bytes:
        slot = (secret, day, region)
        key = self._keys.get(slot)
        if key is not None:
            self.hits += 1
            self._keys.move_to_end(slot)
            return key
        self.misses += 1
        key = derive_signing_key(secret, day, region)
        self._keys[slot] = key
        if len(self._keys) > self._entries_max:
            self._keys.popitem(last=False)
        return key


class VerifiedRequests:
    """Presigned reads already verified, so that a URL used again is not verified again
    from scratch: a bounded LRU map from everything a verification reads (method, raw
    path, raw query, every header name and value) to its result.

    A presigned URL is a bearer token that many requests may carry until it expires (a
    manifest of URLs read every epoch; the same URL fetched by many workers). Only
    successes are kept, so an entry is a request that verified; a request differing in
    any byte of its line or headers is a different key and is verified in full. What an
    entry cannot settle, the time, is checked on every hit (`SigV4Verifier._check_time`),
    and replacing the credentials empties the map.

    Kept: GETs and HEADs, and only from the second time a request is verified (the
    first time only its hash is noted, in `_seen`). URLs sent once (a PUT URL, a
    header-signed request's fresh signature) would only churn the map, and churn costs
    more than the map saves: every evicted entry is garbage for the cycle collector.
    Not thread-safe (the gateway verifies on its event loop)."""

    def __init__(self, entries_max: int) -> None:
        self._entries_max = entries_max
        self._entries: OrderedDict[tuple[object, ...], tuple[float, int, AuthResult]] = \
            OrderedDict()
        self._seen: set[int] = set()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, slot: tuple[object, ...]) -> tuple[float, int, AuthResult] | None:
        """(signed_at, expires_s, result) of a remembered request, else None."""
        found = self._entries.get(slot)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(slot)
        return found

    def put(self, slot: tuple[object, ...], signed_at: float, expires_s: int,
            result: AuthResult) -> None:
        """Note a verified request; remember it if it was verified before."""
        if self._entries_max == 0:
            return
        digest = hash(slot)
        if digest not in self._seen:
            if len(self._seen) >= self._entries_max:
                self._seen.clear()
            self._seen.add(digest)
            return
        self._entries[slot] = (signed_at, expires_s, result)
        if len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self._seen.clear()


# ----- parsing what the request claims -----------------------------------------------------
@functools.lru_cache(maxsize=256)
def _parse_amz_date(text: str, error: type[PetrelError]) -> float:
    """Unix seconds of an x-amz-date (YYYYMMDD'T'HHMMSS'Z'). Cached: every request
    signed in the same second carries the same timestamp."""
    if not _AMZ_DATE.fullmatch(text):
        raise error(f"Invalid date {text!r}: expected YYYYMMDD'T'HHMMSS'Z'.")
    try:  # slicing, not strptime (~10 us)
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                        int(text[11:13]), int(text[13:15]), tzinfo=UTC).timestamp()
    except ValueError:
        raise error(f"Invalid date {text!r}.") from None


@functools.lru_cache(maxsize=256)
def _parse_credential(
    value: str, error: type[PetrelError], region: str | None
) -> tuple[str, str, str]:
    """(access_key_id, day, region) from "AKID/YYYYMMDD/region/s3/aws4_request"."""
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not all(parts):
        raise error(
            f"The credential {value!r} is malformed; expected 'AKID/date/region/s3/aws4_request'."
        )
    access_key_id, day, claimed_region, service, terminator = parts
    if not (len(day) == 8 and is_decimal(day)):
        raise error(f"Invalid credential date {day!r}.")
    if service != SERVICE:
        raise error(f"Incorrect service {service!r}; this endpoint belongs to {SERVICE!r}.")
    if terminator != TERMINATOR:
        raise error(f"Incorrect terminal {terminator!r}; this endpoint uses {TERMINATOR!r}.")
    if region is not None and claimed_region != region:
        raise error(f"The region {claimed_region!r} is wrong; expecting {region!r}.")
    return access_key_id, day, claimed_region


@functools.lru_cache(maxsize=256)
def _parse_signed_headers(
    value: str, error: type[PetrelError], limits: AuthLimits
) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if len(names) > limits.signed_headers_max:
        raise error(f"More than {limits.signed_headers_max} signed headers.")
    if not all(_HEADER_NAME.fullmatch(name) for name in names) or len(set(names)) != len(names):
        raise error(f"SignedHeaders {value!r} is malformed.")
    return names


def _parse_signature(value: str, error: type[PetrelError]) -> str:
    if not _SIGNATURE.fullmatch(value):
        raise error("The signature must be 64 lowercase hexadecimal characters.")
    return value


def single_header(headers: dict[str, list[str]], name: str) -> str | None:
    """The one value of header `name` (lower-case), None if absent; InvalidArgument
    if it is repeated."""
    values = headers.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidArgument(f"The {name} header may appear only once.")
    return values[0]


def _header_date(headers: dict[str, list[str]]) -> tuple[str, float]:
    amz_date = single_header(headers, "x-amz-date")
    if amz_date is not None:
        return amz_date, _parse_amz_date(amz_date, AccessDenied)
    http_date = single_header(headers, "date")
    if http_date is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header.")
    try:
        when = parsedate_to_datetime(http_date).astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        raise AccessDenied(
            "AWS authentication requires a valid Date or x-amz-date header."
        ) from None
    return when.strftime("%Y%m%dT%H%M%SZ"), when.timestamp()


def _authorization_fields(value: str) -> dict[str, str]:
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise AuthorizationHeaderMalformed(f"Unsupported authorization algorithm {algorithm!r}.")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, sep, field_value = component.strip().partition("=")
        if not sep or name in fields:
            raise AuthorizationHeaderMalformed(f"Malformed component {component.strip()!r}.")
        fields[name] = field_value
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise AuthorizationHeaderMalformed(
            "The authorization header must have exactly Credential, SignedHeaders and Signature."
        )
    return fields


def _content_sha256(headers: dict[str, list[str]]) -> str:
    value = single_header(headers, "x-amz-content-sha256")
    if value is None:
        raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    _payload_mode(value)  # validates
    return value


@functools.lru_cache(maxsize=64)
def _payload_mode(payload_hash: str) -> PayloadMode:
    if _SHA256_HEX.fullmatch(payload_hash):
        return PayloadMode.SHA256
    try:
        mode = PayloadMode(payload_hash)
    except ValueError:
        mode = PayloadMode.SHA256
    if mode is PayloadMode.SHA256:
        raise InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
            "or a valid sha256 value."
        )
    return mode


def _header_claim(
    authorization: str, headers: dict[str, list[str]], region: str | None, limits: AuthLimits
) -> _Claim:
    fields = _authorization_fields(authorization)
    error = AuthorizationHeaderMalformed
    access_key_id, day, claimed_region = _parse_credential(fields["Credential"], error, region)
    amz_date, signed_at = _header_date(headers)
    if amz_date[:8] != day:
        raise error("Invalid credential date. Date is not the same as X-Amz-Date.")
    return _Claim(
        access_key_id=access_key_id,
        day=day,
        region=claimed_region,
        amz_date=amz_date,
        signed_at=signed_at,
        signed_headers=_parse_signed_headers(fields["SignedHeaders"], error, limits),
        signature=_parse_signature(fields["Signature"], error),
        payload_hash=_content_sha256(headers),
        expires_s=None,
    )


def _presign_params(query: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in query:
        if name in _PRESIGN_PARAMS:
            if name in found:
                raise AuthorizationQueryParametersError(f"{name} appears more than once.")
            found[name] = value
    if len(found) != len(_PRESIGN_PARAMS):
        raise AuthorizationQueryParametersError(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters."
        )
    return found


def _parse_expires(value: str, limits: AuthLimits) -> int:
    if not is_decimal(value) or len(value) > 12:
        raise AuthorizationQueryParametersError("X-Amz-Expires should be a number.")
    expires_s = int(value)
    if expires_s > limits.presign_expires_s_max:
        raise AuthorizationQueryParametersError(
            f"X-Amz-Expires must be less than a week (in seconds) that is "
            f"{limits.presign_expires_s_max}."
        )
    return expires_s


def _query_claim(
    query: list[tuple[str, str]],
    headers: dict[str, list[str]],
    region: str | None,
    limits: AuthLimits,
) -> _Claim:
    params = _presign_params(query)
    error = AuthorizationQueryParametersError
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise error(f"X-Amz-Algorithm only supports {ALGORITHM!r}.")
    access_key_id, day, claimed_region = _parse_credential(
        params["X-Amz-Credential"], error, region
    )
    amz_date = params["X-Amz-Date"]
    signed_at = _parse_amz_date(amz_date, error)
    if amz_date[:8] != day:
        raise error("Invalid credential date. Date is not the same as X-Amz-Date.")
    # A presigned URL covers no body unless it says so (botocore: header, then constant).
    payload_hash = dict(query).get("X-Amz-Content-Sha256") or single_header(
        headers, "x-amz-content-sha256"
    )
    return _Claim(
        access_key_id=access_key_id,
        day=day,
        region=claimed_region,
        amz_date=amz_date,
        signed_at=signed_at,
        signed_headers=_parse_signed_headers(params["X-Amz-SignedHeaders"], error, limits),
        signature=_parse_signature(params["X-Amz-Signature"], error),
        payload_hash=payload_hash or PayloadMode.UNSIGNED.value,
        expires_s=_parse_expires(params["X-Amz-Expires"], limits),
    )


# ----- the verifier -----------------------------------------------------------------------
class SigV4Verifier:
    """Checks SigV4 header-signed and presigned S3 requests against `credentials`.

    `region=None` accepts any region in the credential scope (the signature still binds
    it); a string refuses other regions, as S3 does. `clock` returns Unix seconds.
    Holds a bounded signing-key cache; create one per gateway app, not per request.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        region: str | None = None,
        limits: AuthLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._credentials = credentials
        self._region = region
        self._limits = limits or AuthLimits()
        self._clock = clock or time.time
        self.signing_keys = SigningKeyCache(self._limits.signing_key_cache_entries_max)
        self.verified = VerifiedRequests(self._limits.verified_requests_max)

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def set_credentials(self, credentials: Credentials) -> None:
        """Replace the valid key pairs (key rotation without a restart). A request
        verified from now on uses the new set; cached signing keys are per secret, so a
        removed secret's keys are simply never looked up again. Requests verified
        under the old set are forgotten."""
        self._credentials = credentials
        self.verified.clear()

    def verify(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
    ) -> AuthResult:
        """Authenticate one request (see the module docstring for what is raised).

        `raw_path` and `raw_query` are as on the wire (still percent-encoded; no '?'):
        with aiohttp, `request.rel_url.raw_path` and `request.rel_url.raw_query_string`
        (not `request.raw_path`, which includes the query). `headers` may be the
        multidict itself, so repeated headers are all seen. The body is not read: its
        hash, if signed, is checked by `chunked.open_body`.

        A presigned request seen verified before (`VerifiedRequests`) is only checked
        against the clock.
        """
        slot = None
        presigned = "X-Amz-Signature=" in raw_query
        if presigned and (method == "GET" or method == "HEAD"):
            pairs = tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)
            slot = (method, raw_path, raw_query, pairs)
            known = self.verified.get(slot)
            if known is not None:
                self._check_time(known[0], known[1])
                return known[2]
            headers = pairs
        if presigned:
            fast = self._presigned(method, raw_path, raw_query, headers)
            if fast is not None:
                if slot is not None:
                    self.verified.put(slot, *fast)
                return fast[2]
        header_map = collect_headers(headers)
        query = parse_query(raw_query)
        claim = self._claim(header_map, query)
        secret = self._credentials.secret_for(claim.access_key_id)
        self._check_time(claim.signed_at, claim.expires_s)
        self._check_all_signed(header_map, claim)
        signing_key = self.signing_keys.get(secret, claim.day, claim.region)
        dropped = "X-Amz-Signature" if claim.expires_s is not None else None
        canonical = canonical_request(
            method,
            raw_path,
            canonical_query(raw_query, drop=dropped),
            header_map,
            claim.signed_headers,
            claim.payload_hash,
        )
        expected = sign(signing_key, sigv4.string_to_sign(claim.amz_date, claim.scope, canonical))
        if not signatures_equal(expected, claim.signature):
            raise SignatureDoesNotMatch()
        result = self._result(claim, signing_key)
        if slot is not None and claim.expires_s is not None:
            self.verified.put(slot, claim.signed_at, claim.expires_s, result)
        return result

    def _presigned(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
    ) -> tuple[float, int, AuthResult] | None:
        """The presigned request SDKs send (query in canonical form, SignedHeaders=host,
        no x-amz-* header, an unsigned payload), verified in one pass without the
        general parsing: (signed_at, expires_s, result), or None for anything else or
        anything wrong. None only means "not accepted here": `verify` then runs the
        general path, which accepts or raises the precise error. So this path can only
        accept a request whose signature it computed over the same canonical request
        the general path builds (tests/gateway/test_auth.py compares the two)."""
        if not raw_path.startswith("/") or not is_canonical_query(raw_query):
            return None
        host = None
        for name, value in (headers.items() if isinstance(headers, Mapping) else headers):
            lower = name.lower()
            if lower == "host":
                if host is not None:
                    return None
                host = value
            elif lower.startswith("x-amz-") or lower == "authorization":
                return None
        if host is None or not host.isascii():
            return None
        params: dict[str, str] = {}
        kept: list[str] = []
        for part in raw_query.split("&"):
            name, equals, value = part.partition("=")
            if not equals:
                return None
            if name.startswith("X-Amz-"):
                if name in params or name not in _PRESIGN_NAMES:
                    return None
                params[name] = value
                if name == "X-Amz-Signature":
                    continue
            kept.append(part)
        if len(params) != len(_PRESIGN_PARAMS) or params["X-Amz-Algorithm"] != ALGORITHM or \
                params["X-Amz-SignedHeaders"] != "host":
            return None
        credential = params["X-Amz-Credential"].replace("%2F", "/").split("/")
        if len(credential) != 5 or "%" in params["X-Amz-Credential"].replace("%2F", ""):
            return None
        access_key_id, day, region, service, terminator = credential
        amz_date, expires, signature = (params["X-Amz-Date"], params["X-Amz-Expires"],
                                        params["X-Amz-Signature"])
        if service != SERVICE or terminator != TERMINATOR or amz_date[:8] != day or \
                (self._region is not None and region != self._region) or \
                not _AMZ_DATE.fullmatch(amz_date) or not _SIGNATURE.fullmatch(signature) or \
                not is_decimal(expires) or len(expires) > 12:
            return None
        expires_s = int(expires)
        secret = self._credentials.find_secret(access_key_id)
        if expires_s > self._limits.presign_expires_s_max or secret is None:
            return None
        try:
            signed_at = _parse_amz_date(amz_date, AuthorizationQueryParametersError)
            self._check_time(signed_at, expires_s)
        except PetrelError:
            return None
        kept.sort(key=pair_order)
        canonical_uri_ = raw_path if PLAIN_PATH.fullmatch(raw_path) else canonical_uri(raw_path)
        canonical = (f"{method.upper()}\n{canonical_uri_}\n{'&'.join(kept)}\n"
                     f"host:{' '.join(host.split())}\n\nhost\n{UNSIGNED_PAYLOAD}")
        scope = f"{day}/{region}/{SERVICE}/{TERMINATOR}"
        to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode('utf-8', 'surrogateescape')).hexdigest()}")
        signing_key = self.signing_keys.get(secret, day, region)
        if not hmac.compare_digest(hmac.digest(signing_key, to_sign.encode(), "sha256").hex(),
                                   signature):
            return None
        return signed_at, expires_s, AuthResult(
            access_key_id=access_key_id, region=region, presigned=True,
            payload_mode=PayloadMode.UNSIGNED, payload_sha256=None,
            chunk_signing=ChunkSigning(seed_signature=signature, signing_key=signing_key,
                                       amz_date=amz_date, scope=scope))

    def _claim(self, headers: dict[str, list[str]], query: list[tuple[str, str]]) -> _Claim:
        authorization = headers.get("authorization")
        query_names = {name for name, _ in query}
        if authorization is not None and "X-Amz-Algorithm" in query_names:
            raise InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                "or the Authorization header should be specified."
            )
        if authorization is not None:
            if len(authorization) != 1:
                raise AuthorizationHeaderMalformed("More than one Authorization header.")
            if authorization[0].startswith("AWS "):
                raise InvalidRequest(_V2_UNSUPPORTED)
            return _header_claim(authorization[0], headers, self._region, self._limits)
        if "X-Amz-Algorithm" in query_names:
            return _query_claim(query, headers, self._region, self._limits)
        if "AWSAccessKeyId" in query_names:
            raise InvalidRequest(_V2_UNSUPPORTED)
        raise AccessDenied("Anonymous access is not allowed.")

    def _check_time(self, signed_at: float, expires_s: int | None) -> None:
        ahead_s = signed_at - self._clock()
        skew_s_max = self._limits.clock_skew_s_max
        if expires_s is None:
            if abs(ahead_s) > skew_s_max:
                raise RequestTimeTooSkewed()
            return
        if ahead_s > skew_s_max:
            raise AccessDenied("Request is not valid yet.")
        if -ahead_s > expires_s:
            raise AccessDenied("Request has expired.")

    @staticmethod
    def _check_all_signed(headers: dict[str, list[str]], claim: _Claim) -> None:
        signed = set(claim.signed_headers)
        if "host" not in signed:
            raise AccessDenied("The host header must be signed.")
        # x-amz-content-sha256 is bound anyway: it is the canonical request's last line.
        unsigned = sorted(
            name
            for name in headers
            if name.startswith("x-amz-") and name not in signed and name != "x-amz-content-sha256"
        )
        if unsigned:
            raise AccessDenied(
                "There were headers present in the request which were not signed: "
                + ", ".join(unsigned)
            )

    @staticmethod
    def _result(claim: _Claim, signing_key: bytes) -> AuthResult:
        mode = _payload_mode(claim.payload_hash)
        return AuthResult(
            access_key_id=claim.access_key_id,
            region=claim.region,
            presigned=claim.expires_s is not None,
            payload_mode=mode,
            payload_sha256=claim.payload_hash.lower() if mode is PayloadMode.SHA256 else None,
            chunk_signing=ChunkSigning(
                seed_signature=claim.signature,
                signing_key=signing_key,
                amz_date=claim.amz_date,
                scope=claim.scope,
            ),
        )


_V2_UNSUPPORTED = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
