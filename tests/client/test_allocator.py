"""petrel.allocator: freed heap kept for the next batch instead of handed back to the OS
and faulted in again page by page."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from petrel import allocator

pytestmark = pytest.mark.skipif(allocator.LIBC is None, reason="no glibc")

# Two rounds of a batch's worth of 10 KiB payloads (10 MiB), each freed at once; the
# page faults of the second round are printed.
_ROUNDS = textwrap.dedent("""
    import resource, sys
    from petrel import allocator, client  # noqa: F401 - as a user's process imports it
    if sys.argv[1] == "client":
        from petrel.client import Client
        Client(sys.argv[2])
    source = bytes(10 * 1024 * 1024)
    for round in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        payloads = [source[i * 10240:(i + 1) * 10240] for i in range(1000)]
        del payloads
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
""")


def _second_round_faults(tmp_path, mode: str, switch: str,  # type: ignore[no-untyped-def]
                         extra_env: dict[str, str] | None = None) -> int:
    conf = tmp_path / "petreloss.conf"
    conf.write_text("[DEFAULT]\ndefault_cluster = a\n[a]\nhost_base = http://127.0.0.1:9\n"
                    "access_key = k\nsecret_key = s\n")
    env = {name: value for name, value in os.environ.items()
           if not (name.startswith("MALLOC_") or name == "GLIBC_TUNABLES")}
    env |= {allocator.ENV_SWITCH: switch, **(extra_env or {})}
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode, str(conf)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_a_client_keeps_freed_heap_for_the_next_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    untuned = _second_round_faults(tmp_path, "plain", "1")  # no Client: nothing tuned
    tuned = _second_round_faults(tmp_path, "client", "1")
    switched_off = _second_round_faults(tmp_path, "client", "0")
    assert untuned >= 1000, untuned  # 10 MiB handed back and faulted in again
    assert tuned <= untuned // 10, (tuned, untuned)
    assert switched_off >= 1000, switched_off


def test_tune_is_idempotent() -> None:
    first = allocator.tune()
    assert allocator.tune() is first


def test_malloc_settings_from_the_environment_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GLIBC_TUNABLES' glibc.malloc.* or a MALLOC_*_ threshold: the client leaves the
    allocator as the environment set it (here: the 128 KiB mmap threshold, so the
    10 MiB comes and goes as before)."""
    pinned = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}
    assert _second_round_faults(tmp_path, "client", "1", pinned) >= 1000
    other = {"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}  # not malloc's
    assert _second_round_faults(tmp_path, "client", "1", other) < 1000


@pytest.mark.parametrize(("environment", "configured"), [
    ({}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, True),
    ({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, False),
    ({"MALLOC_ARENA_MAX": "2"}, False),  # arenas: not what tune() sets
    ({"MALLOC_TRIM_THRESHOLD_": "1"}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "1"}, True),
    ({"MALLOC_TOP_PAD_": "1"}, True),
])
def test_configured_by_environment(monkeypatch: pytest.MonkeyPatch,
                                   environment: dict[str, str], configured: bool) -> None:
    for name in list(os.environ):
        if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES":
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert allocator.configured_by_environment() is configured
