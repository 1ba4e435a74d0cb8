"""Soak (issue 9, item 6): a gateway under sustained load for a bounded time, its resident
memory, open file descriptors and request latency recorded every few seconds, and a
verdict on whether memory and descriptors stay flat.

Load is petrel/loadgen.py (`petrel bench --qps`'s generator, in its own processes),
run as back-to-back phases of `phase_s` seconds alternating mixed GET/PUT (9:1) and
batch get / batch put; each phase gives one latency point (p50, p99), and the gateway's
RSS and fd count are read from /proc every `sample_s` seconds meanwhile.

Before measuring, every mode runs once for `warmup_phase_s` (first-use allocations,
caches). Flat: after the warm-up (and the first `warmup_fraction` of the samples), the
maximum of
the last third is at most the maximum of the first third times (1 + `growth_fraction`)
plus an absolute slack (`rss_slack_bytes`, `fd_slack`). A leak of one object or one
descriptor per request grows far past that in a minute of load; caches that fill once
and stay bounded do not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from petrel import loadgen
from petrel.loadgen import Mode, Plan, Target
from petrel.testing.procstat import open_fds, rss_bytes

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SoakOptions:
    duration_s: float
    sample_s: float = 2.0
    phase_s: float = 10.0
    connections: int = 16
    processes: int = 1
    objects: int = 2000
    size_min: int = 1024
    size_max: int = 16 * 1024
    batch_size: int = 50
    warmup_phase_s: float = 5.0  # each mode once before measuring (first-use allocations)
    warmup_fraction: float = 0.1
    growth_fraction: float = 0.15
    # One RocksDB write buffer (64 MiB by default) fills between flushes: memory that
    # comes and goes with the write rate, not a leak.
    rss_slack_bytes: int = 64 * MiB
    fd_slack: int = 16


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    rss_bytes: int
    fds: int


@dataclass(frozen=True, slots=True)
class Phase:
    t_s: float  # end of the phase, from the start of the soak
    mode: str
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: str = ""


@dataclass(slots=True)
class SoakResult:
    options: SoakOptions
    samples: list[Sample] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)

    def _thirds(self, values: list[int]) -> tuple[int, int]:
        start = int(len(values) * self.options.warmup_fraction)
        steady = values[start:]
        if len(steady) < 3:
            raise ValueError(f"too few samples ({len(values)}) to judge flatness")
        third = len(steady) // 3
        return max(steady[:third]), max(steady[-third:])

    def flat(self, values: list[int], slack: int) -> tuple[bool, str]:
        first, last = self._thirds(values)
        limit = first * (1 + self.options.growth_fraction) + slack
        return last <= limit, f"first third max {first}, last third max {last}, limit {limit:.0f}"

    def verdict(self) -> dict[str, tuple[bool, str]]:
        return {
            "rss": self.flat([s.rss_bytes for s in self.samples], self.options.rss_slack_bytes),
            "fds": self.flat([s.fds for s in self.samples], self.options.fd_slack),
        }

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.phases)

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", "", f"{self.options.duration_s:.0f} s of load, "
                 f"{self.options.connections} connections in {self.options.processes} "
                 f"process(es), {self.options.objects} objects of {self.options.size_min}-"
                 f"{self.options.size_max} bytes; phases of {self.options.phase_s:.0f} s "
                 "alternating mixed (9:1 GET:PUT), batch get and batch put "
                 f"({self.options.batch_size} per batch).", "",
                 "| check | flat | detail |", "|---|---|---|"]
        for name, (ok, detail) in self.verdict().items():
            lines.append(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
        lines += ["", "| t s | phase | ops/s | p50 ms | p99 ms | errors |",
                  "|---|---|---|---|---|---|"]
        kinds = [f"{p.t_s:.0f} s: {p.error_kinds}" for p in self.phases if p.errors]
        for p in self.phases:
            lines.append(f"| {p.t_s:.0f} | {p.mode} | {p.ops_per_s:,.0f} | {p.p50_ms:.2f} "
                         f"| {p.p99_ms:.2f} | {p.errors} |")
        if kinds:
            lines += ["", "Errors: " + "; ".join(kinds)]
        rss = [s.rss_bytes / MiB for s in self.samples]
        fds = [s.fds for s in self.samples]
        lines += ["", f"RSS MiB: min {min(rss):.1f}, max {max(rss):.1f}, last {rss[-1]:.1f}; "
                  f"fds: min {min(fds)}, max {max(fds)}, last {fds[-1]}; "
                  f"{len(self.samples)} samples every {self.options.sample_s:.0f} s."]
        return "\n".join(lines) + "\n"

    def chart(self, path: str, title: str) -> None:
        """A PNG of RSS, fds and latency over time (matplotlib, imported here only)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
        t = [s.t_s for s in self.samples]
        axes[0].plot(t, [s.rss_bytes / MiB for s in self.samples])
        axes[0].set_ylabel("gateway RSS (MiB)")
        axes[0].set_ylim(bottom=0)
        axes[1].plot(t, [s.fds for s in self.samples], color="tab:orange")
        axes[1].set_ylabel("open fds")
        axes[1].set_ylim(bottom=0)
        for mode in sorted({p.mode for p in self.phases}):
            points = [p for p in self.phases if p.mode == mode]
            axes[2].plot([p.t_s for p in points], [p.p99_ms for p in points], "o-",
                         label=f"{mode} p99")
            axes[2].plot([p.t_s for p in points], [p.p50_ms for p in points], "x--",
                         label=f"{mode} p50")
        axes[2].set_ylabel("latency per request (ms)")
        axes[2].set_xlabel("seconds")
        axes[2].legend(fontsize="small")
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def run_soak(target: Target, pid: int, options: SoakOptions,
             log: Callable[[str], None] = print) -> SoakResult:
    """Load `target` (the gateway process `pid`) for `options.duration_s` seconds."""
    bucket = "soak"
    loadgen.ensure_bucket(target, bucket)
    base = Plan(Mode.MIXED, bucket, "soak/", options.objects, options.size_min,
                options.size_max, options.connections, options.processes,
                duration_s=options.phase_s, batch_size=options.batch_size)
    loadgen.sequential(target, base, Mode.PUT)
    modes = [Mode.MIXED, Mode.BATCH_GET, Mode.MIXED, Mode.BATCH_PUT]
    for mode in modes[1:]:  # warm-up: every mode once, not measured
        loadgen.run_plan(target, replace(base, mode=mode, duration_s=options.warmup_phase_s))
    result = SoakResult(options)
    started = time.monotonic()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            result.samples.append(Sample(time.monotonic() - started, rss_bytes(pid),
                                         open_fds(pid)))
            stop.wait(options.sample_s)

    thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
    thread.start()
    try:
        number = 0
        while True:
            left = options.duration_s - (time.monotonic() - started)
            if left < 1.0:
                break
            mode = modes[number % len(modes)]
            # One seed for every phase: object sizes derive from it, and GETs check them.
            plan = replace(base, mode=mode, duration_s=min(options.phase_s, left))
            tally = loadgen.run_plan(target, plan)
            latencies = sorted(tally.latencies)
            phase = Phase(time.monotonic() - started, mode.value, tally.ops,
                          tally.ops / tally.elapsed_s if tally.elapsed_s else 0.0,
                          loadgen.percentile(latencies, 0.5) * 1000,
                          loadgen.percentile(latencies, 0.99) * 1000,
                          sum(tally.errors.values()),
                          ", ".join(f"{k} x{n}" for k, n in tally.errors.most_common(3)))
            result.phases.append(phase)
            log(f"{phase.t_s:6.0f}s {phase.mode:10s} {phase.ops_per_s:8,.0f} ops/s "
                f"p50 {phase.p50_ms:6.2f} ms p99 {phase.p99_ms:7.2f} ms errors {phase.errors} "
                f"rss {result.samples[-1].rss_bytes / MiB:.0f} MiB fds {result.samples[-1].fds}")
            number += 1
    finally:
        stop.set()
        thread.join()
    return result
