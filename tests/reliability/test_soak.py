"""Soak, the CI version (issue 9, item 6): about a minute of high load on a gateway
(petrel/loadgen.py: mixed GET/PUT, batch get, batch put phases) with its resident memory
and open file descriptors sampled every 2 s; both must be flat after the warm-up
(petrel/testing/soak.py defines flat), and no request may fail. The 30-minute version
with a chart: `python -m bench.soak` (bench/results/soak-<date>.md and .png).

About 50 s with its warm-up; PETREL_SOAK_S sets the measured length (default 36 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from relsupport import ACCESS_KEY, SECRET_KEY

from petrel.loadgen import Target
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway
from petrel.testing.soak import SoakOptions, SoakResult, run_soak

SOAK_S = float(os.environ.get("PETREL_SOAK_S", "36"))


@pytest.fixture
def default_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with the default store settings, as deployed (the module gateway's tiny
    segments would fill the open-segment-file cache during the soak)."""
    running = start_gateway(str(tmp_path / "data"), "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY)
    yield running
    assert stop_gateway(running) == 0, running.log()


def test_memory_and_fds_flat_under_load(default_gateway: Gateway, tmp_path: Path) -> None:
    gateway = default_gateway
    options = SoakOptions(duration_s=SOAK_S, sample_s=2.0, phase_s=6.0, warmup_phase_s=3.0,
                          connections=16, processes=1, objects=1000)
    lines: list[str] = []
    result = run_soak(Target(gateway.endpoint, ACCESS_KEY, SECRET_KEY), gateway.process.pid,
                      options, log=lines.append)
    (tmp_path / "soak.md").write_text(result.markdown("CI soak"), encoding="utf-8")
    print("\n".join(lines))
    assert result.errors == 0, result.markdown("CI soak")
    assert sum(p.ops for p in result.phases) > 1000, result.markdown("CI soak")
    for name, (ok, detail) in result.verdict().items():
        assert ok, f"{name} grew: {detail}\n{result.markdown('CI soak')}"


def _result(rss_mib: list[float], fds: list[int]) -> SoakResult:
    from petrel.testing.soak import Sample

    result = SoakResult(SoakOptions(duration_s=1))
    result.samples = [Sample(i, int(r * 1024 * 1024), f)
                      for i, (r, f) in enumerate(zip(rss_mib, fds, strict=True))]
    return result


def test_flatness_verdict_catches_a_leak() -> None:
    flat = _result([100, 150, 151, 150, 152, 151, 150, 152, 151, 152],
                   [40, 60, 61, 60, 62, 60, 61, 60, 62, 61])
    assert all(ok for ok, _ in flat.verdict().values())
    leaking = _result([100, 150, 170, 190, 210, 230, 250, 270, 290, 310],
                      [40, 60, 80, 100, 120, 140, 160, 180, 200, 220])
    assert not any(ok for ok, _ in leaking.verdict().values())
