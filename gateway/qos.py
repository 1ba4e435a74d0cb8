"""Quality of service: per access key and per bucket limits on requests/s and bytes/s
(token buckets) and on requests in flight per access key.

A request over a limit is answered at once with 503 SlowDown and a Retry-After header
(seconds until the bucket has tokens again): never queued, never a hang. Admission
charges one request token and the declared body bytes; the response's bytes are
charged when it is done, so a client reading large objects runs into debt and is slowed
on its next requests. Limits come from the `[qos]` table of the config file and can be
replaced while running (`Qos.configure`): the buckets of a key or bucket whose limits
did not change keep their tokens.

    [qos]
    key_requests_per_s = 0        # defaults for every access key; 0 = unlimited
    key_bytes_per_s = 0
    key_inflight_max = 0
    bucket_requests_per_s = 0     # defaults for every bucket
    bucket_bytes_per_s = 0
    burst_s = 1.0                 # a bucket holds this many seconds of its rate

    [qos.keys.AKIAEXAMPLE]        # one access key's own limits
    requests_per_s = 100
    bytes_per_s = 104857600
    inflight_max = 32

    [qos.buckets.training-data]   # one bucket's own limits
    requests_per_s = 5000
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from petrel.errors import SlowDown

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Limit:
    """One subject's limits; 0 means unlimited."""

    requests_per_s: float = 0.0
    bytes_per_s: float = 0.0
    inflight_max: int = 0

    def __post_init__(self) -> None:
        if self.requests_per_s < 0 or self.bytes_per_s < 0 or self.inflight_max < 0:
            raise ValueError("QoS limits must be >= 0 (0 = unlimited)")

    @property
    def unlimited(self) -> bool:
        return not (self.requests_per_s or self.bytes_per_s or self.inflight_max)


@dataclass(frozen=True, slots=True)
class QosConfig:
    key_default: Limit = Limit()
    bucket_default: Limit = Limit()
    keys: Mapping[str, Limit] = field(default_factory=dict)
    buckets: Mapping[str, Limit] = field(default_factory=dict)
    burst_s: float = 1.0
    # Whether any limit is set: asked on every request, computed once.
    enabled: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.burst_s <= 0:
            raise ValueError("qos.burst_s must be > 0")
        if self.bucket_default.inflight_max or any(b.inflight_max
                                                   for b in self.buckets.values()):
            raise ValueError("inflight_max is a per access key limit, not per bucket")
        object.__setattr__(self, "enabled", not (
            self.key_default.unlimited and self.bucket_default.unlimited
            and all(v.unlimited for v in self.keys.values())
            and all(v.unlimited for v in self.buckets.values())))

    def for_key(self, access_key: str) -> tuple[str, Limit]:
        """(metrics label, limit): a configured key is named, others are "*"."""
        own = self.keys.get(access_key)
        return (access_key, own) if own is not None else ("*", self.key_default)

    def for_bucket(self, bucket: str) -> tuple[str, Limit]:
        own = self.buckets.get(bucket)
        return (bucket, own) if own is not None else ("*", self.bucket_default)


_LIMIT_FIELDS = {"requests_per_s": float, "bytes_per_s": float, "inflight_max": int}
_TOP_FIELDS = {"key_requests_per_s", "key_bytes_per_s", "key_inflight_max",
               "bucket_requests_per_s", "bucket_bytes_per_s", "burst_s", "keys", "buckets"}


def _number(where: str, value: Any, kind: type[float] | type[int]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (kind is int and not isinstance(value, int)):
        raise ValueError(f"{where} must be {'an integer' if kind is int else 'a number'}, "
                         f"not {value!r}")
    if value < 0:
        raise ValueError(f"{where} must be >= 0 (0 = unlimited), not {value!r}")
    return kind(value)


def _limit(where: str, table: Any) -> Limit:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(table) - set(_LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown setting {where}.{sorted(unknown)[0]}")
    return Limit(**{name: _number(f"{where}.{name}", value, _LIMIT_FIELDS[name])
                    for name, value in table.items()})


def parse_qos(table: Mapping[str, Any]) -> QosConfig:
    """The `[qos]` table of a config file; ValueError naming the bad setting."""
    unknown = set(table) - _TOP_FIELDS
    if unknown:
        raise ValueError(f"unknown setting qos.{sorted(unknown)[0]}")

    def get(name: str, kind: type[float] | type[int]) -> Any:
        return _number(f"qos.{name}", table.get(name, 0), kind)

    try:
        key_default = Limit(get("key_requests_per_s", float), get("key_bytes_per_s", float),
                            get("key_inflight_max", int))
        bucket_default = Limit(get("bucket_requests_per_s", float),
                               get("bucket_bytes_per_s", float))
        keys = {str(k): _limit(f"qos.keys.{k}", v) for k, v in table.get("keys", {}).items()}
        buckets = {str(k): _limit(f"qos.buckets.{k}", v)
                   for k, v in table.get("buckets", {}).items()}
        return QosConfig(key_default, bucket_default, keys, buckets,
                         _number("qos.burst_s", table.get("burst_s", 1.0), float))
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"qos: {exc}") from None


class TokenBucket:
    """`rate` tokens per second, holding at most `capacity`; may go into debt (a
    response larger than the bucket), which later requests pay back by waiting."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` tokens are there (0: now). Call after `refill`."""
        missing = min(amount, self.capacity) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate


@dataclass(slots=True)
class _Subject:
    limit: Limit
    requests: TokenBucket | None
    bytes: TokenBucket | None
    inflight: int = 0


class Admission:
    """A request let in: `done(sent_bytes)` charges the response and frees the
    in-flight slot. Idempotent."""

    __slots__ = ("_bucket", "_key", "_qos")

    def __init__(self, qos: Qos | None, key: _Subject | None, bucket: _Subject | None) -> None:
        self._qos, self._key, self._bucket = qos, key, bucket

    def done(self, sent_bytes: int) -> None:
        if self._qos is None:
            return
        now = self._qos.clock()
        for subject in (self._key, self._bucket):
            if subject is not None and subject.bytes is not None and sent_bytes:
                subject.bytes.refill(now)
                subject.bytes.tokens -= sent_bytes
        if self._key is not None and self._key.inflight:
            self._key.inflight -= 1
        self._qos = None


_FREE = Admission(None, None, None)


class Qos:
    """The gateway's QoS state. `admit` raises SlowDown (with `retry_after_s`) or
    returns an Admission; `on_throttle(scope, name, reason)` counts refusals."""

    def __init__(self, config: QosConfig,
                 on_throttle: Callable[[str, str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.on_throttle = on_throttle
        self.config = config
        self._keys: dict[str, _Subject] = {}
        self._buckets: dict[str, _Subject] = {}

    def configure(self, config: QosConfig) -> None:
        """New limits, live. Subjects whose limit is unchanged keep their state."""
        self.config = config
        for table, lookup in ((self._keys, config.for_key), (self._buckets, config.for_bucket)):
            for name in list(table):
                if table[name].limit != lookup(name)[1]:
                    inflight = table[name].inflight
                    table[name] = self._subject(lookup(name)[1])
                    table[name].inflight = inflight

    def _subject(self, limit: Limit) -> _Subject:
        now = self.clock()
        burst = self.config.burst_s

        def bucket(rate: float) -> TokenBucket | None:
            return TokenBucket(rate, max(rate * burst, 1.0), now) if rate else None

        return _Subject(limit, bucket(limit.requests_per_s), bucket(limit.bytes_per_s))

    def _get(self, table: dict[str, _Subject], name: str, limit: Limit) -> _Subject | None:
        if limit.unlimited:
            return None
        subject = table.get(name)
        if subject is None:
            # Subjects are the configured keys and the buckets/keys seen; bounded by
            # the credentials and the buckets that exist.
            subject = table[name] = self._subject(limit)
        return subject

    def admit(self, access_key: str | None, bucket: str | None,
              body_bytes: int) -> Admission:
        config = self.config
        if not config.enabled:
            return _FREE
        key_name = access_key or ANONYMOUS
        key_label, key_limit = config.for_key(key_name)
        key = self._get(self._keys, key_name, key_limit)
        subject_bucket = None
        bucket_label = ""
        if bucket:
            bucket_label, bucket_limit = config.for_bucket(bucket)
            subject_bucket = self._get(self._buckets, bucket, bucket_limit)
        now = self.clock()
        checks = (("key", key_label, key), ("bucket", bucket_label, subject_bucket))
        for scope, label, subject in checks:
            if subject is None:
                continue
            if scope == "key" and subject.limit.inflight_max and \
                    subject.inflight >= subject.limit.inflight_max:
                self._refuse(scope, label, "inflight", 1.0)
            for reason, tokens, amount in (("requests", subject.requests, 1.0),
                                           ("bytes", subject.bytes, float(body_bytes))):
                if tokens is None:
                    continue
                tokens.refill(now)
                wait = tokens.wait_s(amount) if amount else tokens.wait_s(0.0)
                if wait > 0 or tokens.tokens < 0:
                    self._refuse(scope, label, reason, max(wait, -tokens.tokens / tokens.rate))
        for _, _, subject in checks:
            if subject is None:
                continue
            if subject.requests is not None:
                subject.requests.tokens -= 1.0
            if subject.bytes is not None:
                subject.bytes.tokens -= body_bytes
        if key is not None:
            key.inflight += 1
        return Admission(self, key, subject_bucket)

    def _refuse(self, scope: str, label: str, reason: str, wait_s: float) -> None:
        if self.on_throttle is not None:
            self.on_throttle(scope, label, reason)
        error = SlowDown(f"{scope} {label!r} is over its {reason} limit; retry later")
        error.retry_after_s = max(1, math.ceil(wait_s))
        raise error
