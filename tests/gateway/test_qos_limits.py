"""QoS token buckets (gateway/qos.py) on a fake clock: who is refused, when, with what
Retry-After, and what a live reconfiguration keeps."""

from __future__ import annotations

import pytest

from petrel.errors import SlowDown
from petrel_gateway.qos import Limit, Qos, QosConfig, parse_qos


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(qos: Qos, key: str | None, bucket: str | None, body: int = 0) -> SlowDown:
    with pytest.raises(SlowDown) as caught:
        qos.admit(key, bucket, body)
    return caught.value


def test_requests_per_second_per_key() -> None:
    clock = Clock()
    throttled: list[tuple[str, str, str]] = []
    qos = Qos(QosConfig(key_default=Limit(requests_per_s=2)),
              lambda *a: throttled.append(a), clock)
    qos.admit("a", "b", 0).done(0)
    qos.admit("a", "b", 0).done(0)
    error = refused(qos, "a", "b")
    assert error.retry_after_s == 1 and error.status == 503 and error.code == "SlowDown"
    assert throttled == [("key", "*", "requests")]
    qos.admit("other", "b", 0).done(0)  # another key has its own bucket
    clock.now += 0.5
    qos.admit("a", "b", 0).done(0)  # one token back after half a second
    refused(qos, "a", "b")


def test_bytes_per_second_charges_bodies_and_responses() -> None:
    clock = Clock()
    qos = Qos(QosConfig(keys={"big": Limit(bytes_per_s=1000)}), clock=clock)
    qos.admit("big", "b", 600).done(0)
    error = refused(qos, "big", "b", body=600)  # 400 left, 600 asked
    assert error.retry_after_s == 1
    qos.admit("big", "b", 300).done(5_000)  # a large response: into debt
    error = refused(qos, "big", "b")
    assert error.retry_after_s == 5  # 100 - 5,000: 4,900 bytes of debt at 1,000/s
    clock.now += 4.8
    refused(qos, "big", "b")
    clock.now += 0.2
    qos.admit("big", "b", 0).done(0)
    qos.admit("unlisted", "b", 10**9).done(10**9)  # no default limit: unlimited


def test_inflight_bound_per_key_and_release() -> None:
    qos = Qos(QosConfig(key_default=Limit(inflight_max=2)), clock=Clock())
    first, second = qos.admit("a", None, 0), qos.admit("a", None, 0)
    assert "inflight" in refused(qos, "a", None).detail
    first.done(0)
    first.done(0)  # idempotent: frees one slot, once
    third = qos.admit("a", None, 0)
    refused(qos, "a", None)
    second.done(0)
    third.done(0)
    qos.admit("a", None, 0)


def test_bucket_limits_apply_to_every_key() -> None:
    throttled: list[tuple[str, str, str]] = []
    qos = Qos(QosConfig(buckets={"hot": Limit(requests_per_s=1)}),
              lambda *a: throttled.append(a), Clock())
    qos.admit("a", "hot", 0).done(0)
    refused(qos, "b", "hot")
    qos.admit("b", "cold", 0).done(0)
    assert throttled == [("bucket", "hot", "requests")]


def test_anonymous_requests_share_one_subject() -> None:
    qos = Qos(QosConfig(keys={"anonymous": Limit(requests_per_s=1)}), clock=Clock())
    qos.admit(None, "pub", 0).done(0)
    refused(qos, None, "pub")


def test_configure_keeps_unchanged_subjects_and_resets_changed_ones() -> None:
    clock = Clock()
    qos = Qos(QosConfig(keys={"a": Limit(requests_per_s=1), "b": Limit(requests_per_s=1)}),
              clock=clock)
    qos.admit("a", None, 0).done(0)
    qos.admit("b", None, 0).done(0)
    qos.configure(QosConfig(keys={"a": Limit(requests_per_s=1), "b": Limit(requests_per_s=5)}))
    refused(qos, "a", None)  # same limit: still out of tokens
    for _ in range(5):
        qos.admit("b", None, 0).done(0)  # new limit, fresh bucket
    qos.configure(QosConfig())
    for _ in range(20):
        qos.admit("a", None, 0).done(0)  # limits removed live


def test_parse_qos_table() -> None:
    config = parse_qos({"key_requests_per_s": 100, "bucket_bytes_per_s": 1e9, "burst_s": 2,
                        "keys": {"AK1": {"requests_per_s": 5, "inflight_max": 3}},
                        "buckets": {"data": {"bytes_per_s": 1024}}})
    assert config.key_default == Limit(requests_per_s=100)
    assert config.bucket_default == Limit(bytes_per_s=1e9)
    assert config.keys["AK1"] == Limit(requests_per_s=5, inflight_max=3)
    assert config.buckets["data"].bytes_per_s == 1024 and config.burst_s == 2
    assert config.enabled and not QosConfig().enabled


@pytest.mark.parametrize(("table", "message"), [
    ({"key_rps": 1}, "unknown setting qos.key_rps"),
    ({"key_requests_per_s": "fast"}, "qos.key_requests_per_s must be a number"),
    ({"key_requests_per_s": -1}, "qos.key_requests_per_s must be >= 0"),
    ({"keys": {"a": {"inflight_max": 1.5}}}, "qos.keys.a.inflight_max must be an integer"),
    ({"keys": {"a": {"speed": 1}}}, "unknown setting qos.keys.a.speed"),
    ({"buckets": {"b": {"inflight_max": 2}}}, "per access key"),
    ({"burst_s": 0}, "burst_s"),
])
def test_parse_qos_refuses_bad_settings(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_qos(table)
