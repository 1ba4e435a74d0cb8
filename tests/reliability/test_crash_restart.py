"""Crash and restart under load (issue 9, item 2), the CI version: 5 rounds of mixed
load (PUT, overwrite, DELETE, batch put) on a gateway started as the README starts it,
SIGKILLed at a random moment and restarted; every acknowledged write must be present
and byte-identical, a write in flight at the kill old or new, never torn
(petrel/testing/crashloop.py). The long version: `python -m bench.crash_loop --rounds 50`.
"""

from __future__ import annotations

import os
from pathlib import Path

from petrel.testing.crashloop import ABSENT, CrashLoop, KeyState, Options
from petrel.testing.gateway import start_gateway, stop_gateway

ROUNDS = int(os.environ.get("PETREL_CRASH_ROUNDS", "5"))


def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    lines: list[str] = []
    options = Options(work_dir=str(tmp_path), rounds=ROUNDS, threads=6, keys_per_thread=20,
                      kill_after_s=(0.3, 1.5), early_kill_every=3)
    summary = CrashLoop(options, log=lines.append).run()
    print("\n".join(lines))
    assert summary.problems == [], "\n".join(summary.problems[:30])
    load_rounds = summary.rounds[:-1]
    # The kills must have landed on live load: writes acknowledged and some in flight.
    assert sum(r.acked_ops for r in load_rounds) > 100 * ROUNDS, summary.table()
    assert sum(r.unknown_ops for r in load_rounds) >= ROUNDS, summary.table()


def test_the_harness_detects_a_lost_write(tmp_path: Path) -> None:
    """The verification is not vacuous: a model claiming an acknowledged value the store
    does not hold (a lost or wrong write) is reported."""
    loop = CrashLoop(Options(work_dir=str(tmp_path), rounds=1, threads=2, keys_per_thread=5,
                             kill_after_s=(0.3, 0.6), early_kill_every=0), log=lambda line: None)
    assert loop.run().problems == []
    present = [k for k, s in loop.model.keys.items() if s.acked != ABSENT]
    absent = [k for k, s in loop.model.keys.items() if s.acked == ABSENT]
    assert present
    loop.model.keys[present[0]] = KeyState(acked="0" * 64)  # "acknowledged" other bytes
    if absent:
        loop.model.keys[absent[0]] = KeyState(acked="1" * 64)  # "acknowledged", missing
    gateway = start_gateway(loop.data_dir, *loop._flags("batch"))
    try:
        problems, _, _ = loop.verify(gateway)
    finally:
        stop_gateway(gateway)
    assert any("WRONG BYTES" in p and repr(present[0]) in p for p in problems), problems
    if absent:
        assert any("LOST" in p and repr(absent[0]) in p for p in problems), problems
