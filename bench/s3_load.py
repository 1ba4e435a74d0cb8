"""Drive wrk (bench/s3_wrk.lua) against one server and read back what it measured.

Each run is bounded by wrk's -d (seconds) plus a kill deadline here; wrk's own summary
(requests, bytes, socket errors, non-2xx) and latency percentiles come back as one JSON
line from the script's done(), and the raw text (with --latency's distribution) is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

from bench.s3_servers import memory

WRK_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3_wrk.lua")
# wrk waits this long for a response before counting a timeout (its default is 2 s,
# shorter than an fsync stall on a busy shared disk).
WRK_TIMEOUT_S = 10
# Extra seconds wrk gets beyond -d to read URL files and print before it is killed.
WRK_GRACE_S = 60


@dataclass(frozen=True, slots=True)
class LoadSpec:
    mode: str  # get | put | mixed
    threads: int
    connections: int
    duration_s: int
    get_file: str = "-"
    put_file: str = "-"
    body_bytes: int = 0
    put_every: int = 5  # mixed only
    fresh_gets: bool = False  # get_file signs each request anew: a GET wrap is a reuse


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_status: int  # non-2xx/3xx responses
    errors_timeout: int
    wraps: int  # URL lists that ran out and started over (PUT overwrites, fresh GET reuse)
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_p999: float
    latency_ms_max: float
    command: str
    raw: str

    @property
    def ops_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return (self.errors_connect + self.errors_read + self.errors_write
                + self.errors_status + self.errors_timeout)


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk not found: run bench/setup.sh (apt-get install wrk)")
    return path


def wrk_version() -> str:
    done = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10,
                          check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def command_for(endpoint: str, spec: LoadSpec) -> list[str]:
    return [wrk_binary(), "-t", str(spec.threads), "-c", str(spec.connections),
            "-d", f"{spec.duration_s}s", "--timeout", f"{WRK_TIMEOUT_S}s", "--latency",
            "-s", WRK_LUA, endpoint, "--", spec.mode, str(spec.threads), spec.get_file,
            spec.put_file, str(spec.body_bytes), str(spec.put_every),
            "1" if spec.fresh_gets else "0"]


def parse_output(raw: str, command: str) -> WrkResult:
    """wrk's output (with s3_wrk.lua's WRK_JSON line) -> WrkResult; raises if absent."""
    line = next((ln for ln in raw.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{raw[-4000:]}")
    doc = json.loads(line.removeprefix("WRK_JSON "))
    ms = 1000.0
    return WrkResult(
        requests=doc["requests"], duration_s=doc["duration_us"] / 1e6,
        bytes_read=doc["bytes"], errors_connect=doc["errors_connect"],
        errors_read=doc["errors_read"], errors_write=doc["errors_write"],
        errors_status=doc["errors_status"], errors_timeout=doc["errors_timeout"],
        wraps=doc["wraps"], latency_ms_mean=doc["latency_us_mean"] / ms,
        latency_ms_p50=doc["latency_us_p50"] / ms, latency_ms_p90=doc["latency_us_p90"] / ms,
        latency_ms_p99=doc["latency_us_p99"] / ms,
        latency_ms_p999=doc["latency_us_p999"] / ms,
        latency_ms_max=doc["latency_us_max"] / ms, command=command, raw=raw)


def run_wrk(endpoint: str, spec: LoadSpec) -> WrkResult:
    """One wrk run; raises if wrk fails or prints no summary."""
    command = command_for(endpoint, spec)
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=spec.duration_s + WRK_GRACE_S)
    raw = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}:\n{raw[-4000:]}")
    return parse_output(raw, " ".join(command))


@dataclass(frozen=True, slots=True)
class RssSample:
    t_s: float
    rss_bytes: int
    anon_bytes: int
    file_bytes: int


class RssSampler:
    """Samples VmRSS of one PID every `interval_s` on a daemon thread until stopped."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval_s):
                return

    def _sample(self) -> None:
        now = memory(self.pid)
        self.samples.append(RssSample(time.monotonic() - self._started, now.rss_bytes,
                                      now.anon_bytes, now.file_bytes))

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        self._sample()
