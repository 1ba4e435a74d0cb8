"""The soak's flatness rule (petrel/testing/soak.py) on synthetic series shaped like the
CI soak's: 60 samples, one every 2 s. Clean runs measured 60-90 MiB of anonymous memory
net of the memtables, and 35-50 descriptors."""

from __future__ import annotations

import random

import pytest

from petrel.testing.soak import MiB, Sample, SoakOptions, SoakResult, flatness

SAMPLES = 60


def _result(anon_mib: list[float], fds: list[int], wal_mib: list[float] | None = None,
            rss_extra_mib: list[float] | None = None) -> SoakResult:
    wal = wal_mib or [0.0] * len(anon_mib)
    extra = rss_extra_mib or [0.0] * len(anon_mib)
    result = SoakResult(SoakOptions(duration_s=2 * len(anon_mib), sample_s=2.0))
    result.samples = [Sample(2.0 * i, int((a + 22 + x) * MiB), int(a * MiB), f, int(w * MiB))
                      for i, (a, f, w, x) in enumerate(zip(anon_mib, fds, wal, extra,
                                                           strict=True))]
    return result


def _noisy(level: float, spread: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.uniform(-spread, spread) for _ in range(SAMPLES)]


def _flat_fds() -> list[int]:
    return [round(v) for v in _noisy(42, 5, seed=2)]


def test_flat_but_spiky_series_pass() -> None:
    anon = _noisy(80, 3)
    rss_extra = [0.0] * SAMPLES
    fds = _flat_fds()
    for i in range(5, SAMPLES, 13):  # a batch phase's buffers; a segment mapped to seal
        anon[i] += 150
        anon[i + 1] += 90
        rss_extra[i] += 250
        fds[i] += 30
        fds[i + 1] -= 20
    verdict = _result(anon, fds, rss_extra_mib=rss_extra).verdict()
    assert all(check.ok for check in verdict.values()), verdict


def test_memory_leaking_one_mib_per_sample_fails() -> None:
    anon = [a + i for i, a in enumerate(_noisy(80, 3))]
    verdict = _result(anon, _flat_fds()).verdict()
    assert not verdict["memory"].ok, verdict["memory"]
    assert verdict["fds"].ok


def test_memtable_growth_is_netted_out_but_only_with_its_wal() -> None:
    # The CI soak's index WAL grew 0.25-0.35 MiB per sample here (2 cores); a machine
    # three times as fast writes 1 MiB per sample, as a leak of 1.35 MiB per sample.
    wal = [1.0 * i for i in range(SAMPLES)]
    anon = [a + 1.35 * w for a, w in zip(_noisy(80, 3), wal, strict=True)]
    assert _result(anon, _flat_fds(), wal_mib=wal).verdict()["memory"].ok
    assert not _result(anon, _flat_fds()).verdict()["memory"].ok


def test_memory_kept_after_a_memtable_flush_passes() -> None:
    # The WAL is deleted at the flush; the allocator keeps the memtable's memory for the
    # next one, so resident memory stays at its high-water mark.
    wal = [min(2.0 * i, 60.0) if i < 30 else 2.0 * (i - 30) for i in range(SAMPLES)]
    high, anon = 0.0, []
    for a, w in zip(_noisy(80, 3), wal, strict=True):
        high = max(high, w)
        anon.append(a + 1.35 * high)
    verdict = _result(anon, _flat_fds(), wal_mib=wal).verdict()
    assert verdict["memory"].ok and verdict["memtables"].ok, verdict


def test_a_memtable_past_its_write_buffers_fails() -> None:
    wal = [3.0 * i for i in range(SAMPLES)]  # 177 MiB: never flushed
    anon = [a + 1.35 * w for a, w in zip(_noisy(80, 3), wal, strict=True)]
    verdict = _result(anon, _flat_fds(), wal_mib=wal).verdict()
    assert verdict["memory"].ok
    assert not verdict["memtables"].ok


def test_fd_leak_fails() -> None:
    fds = [f + i for i, f in enumerate(_flat_fds())]
    verdict = _result(_noisy(80, 3), fds).verdict()
    assert not verdict["fds"].ok, verdict["fds"]
    assert verdict["memory"].ok


def test_warm_up_samples_and_falling_series_pass() -> None:
    values = [300.0] * 6 + _noisy(80, 3)[6:]  # the first 10% is warm-up
    assert flatness(values, warmup_fraction=0.1, growth_fraction=0.1, slack=16).ok
    falling = [200.0 - i for i in range(SAMPLES)]
    assert flatness(falling, warmup_fraction=0.1, growth_fraction=0.1, slack=16).ok


def test_too_few_samples_raise() -> None:
    with pytest.raises(ValueError):
        flatness([1.0, 2.0], warmup_fraction=0.1, growth_fraction=0.1, slack=0)
