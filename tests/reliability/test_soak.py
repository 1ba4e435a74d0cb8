"""Soak, the CI version (issue 9, item 6): two minutes of high load on a gateway
(petrel/loadgen.py: mixed GET/PUT, batch get, batch put phases) with its memory, open
file descriptors and index WAL sampled every 2 s; memory (anonymous, net of the index's
memtables) and descriptors must be flat after the warm-up (petrel/testing/soak.py
defines flat; tests/reliability/test_soak_rule.py tests the rule), and no request may
fail. The 30-minute version with a chart: `python -m bench.soak` (bench/results/).

About 2.5 minutes with its warm-up; PETREL_SOAK_S sets the measured length (default 120).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from relsupport import ACCESS_KEY, SECRET_KEY

from petrel.loadgen import Target
from petrel.testing.gateway import Gateway, start_gateway, stop_gateway
from petrel.testing.soak import LIVE_MEMORY_ENV, SoakOptions, run_soak

SOAK_S = float(os.environ.get("PETREL_SOAK_S", "120"))


@pytest.fixture
def default_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with the default store settings, as deployed (the module gateway's tiny
    segments would fill the open-segment-file cache during the soak), and glibc's mmap
    threshold fixed so that resident memory is live memory (LIVE_MEMORY_ENV says why)."""
    running = start_gateway(str(tmp_path / "data"), "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY, env=LIVE_MEMORY_ENV)
    yield running
    assert stop_gateway(running) == 0, running.log()


def test_memory_and_fds_flat_under_load(default_gateway: Gateway, tmp_path: Path) -> None:
    gateway = default_gateway
    options = SoakOptions(duration_s=SOAK_S, sample_s=2.0, phase_s=6.0, warmup_phase_s=6.0,
                          connections=16, processes=1, objects=1000)
    lines: list[str] = []
    result = run_soak(Target(gateway.endpoint, ACCESS_KEY, SECRET_KEY), gateway.process.pid,
                      gateway.data_dir, options, log=lines.append)
    report = result.markdown("CI soak")
    (tmp_path / "soak.md").write_text(report, encoding="utf-8")
    print("\n".join(lines) + "\n" + report)
    assert result.errors == 0, report
    assert sum(p.ops for p in result.phases) > 1000, report
    for name, check in result.verdict().items():
        assert check.ok, f"{name} grew: {check.detail}\n{report}"
