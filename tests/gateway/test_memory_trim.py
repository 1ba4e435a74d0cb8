"""Freed heap memory handed back to the OS (petrel_gateway.memory): what keeps a
serving process's RSS from staying at the highest point bursts of allocations reached."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from petrel_gateway import memory
from petrel_gateway.settings import GatewaySettings

pytestmark = pytest.mark.skipif(memory.MALLOC_TRIM is None, reason="no glibc malloc_trim")

# In a fresh process: 256 MiB in 64 KiB blocks (under glibc's mmap threshold: heap
# memory), all freed but the last, which pins the top of the heap so glibc's own
# trimming of the top cannot give any of it back. RssAnon before and after the trim.
_FRAGMENTED = textwrap.dedent("""
    from petrel_gateway.memory import MALLOC_TRIM

    def rss_anon_mib():
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) // 1024

    blocks = [bytearray(64 * 1024) for _ in range(4096)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    last = blocks[-1]
    del blocks
    held = rss_anon_mib()
    MALLOC_TRIM(0)
    print(held, rss_anon_mib(), len(last))
""")


def test_trim_gives_freed_heap_back() -> None:
    done = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True,
                          text=True, timeout=60, check=True)
    held, trimmed, _ = (int(v) for v in done.stdout.split())
    assert held >= 200, done.stdout  # glibc kept the freed blocks resident
    assert trimmed <= held - 200, done.stdout


def test_trim_runs_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "MALLOC_TRIM", lambda pad: calls.append(pad) or 1)

    async def run() -> None:
        task = asyncio.create_task(memory.trim_periodically(0.02))
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(run())
    assert len(calls) >= 3 and set(calls) == {0}


def test_zero_interval_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "MALLOC_TRIM", lambda pad: calls.append(pad) or 1)
    asyncio.run(asyncio.wait_for(memory.trim_periodically(0), timeout=1))
    assert calls == []
    with pytest.raises(ValueError, match="memory_trim_interval_s"):
        GatewaySettings(memory_trim_interval_s=-1)
