"""The results: one typed value, rendered as Markdown, JSON and a compact stdout table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from bench import throughput as tp
from bench.index_size import IndexResult
from bench.machine import Machine
from bench.profiles import Profile
from bench.replay import ReplayResult
from bench.workload import size_label

GiB = 1024**3
TARGET_SIZE_BYTES = 10 * 1024  # the size the targets are stated for
INDEX_BEYOND_KEY_TARGET_BYTES = 64


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    sizes: list[tp.SizePlan]
    index_objects: int
    replay_bytes: int
    profile_count: int
    repeats: int
    concurrency: int = tp.CONCURRENCY


@dataclass(slots=True)
class Results:
    date: str
    command: str
    machine: Machine
    settings: Settings
    sizes: list[tp.SizeResult] = field(default_factory=list)
    index: IndexResult | None = None
    replay: ReplayResult | None = None
    profiles: list[Profile] = field(default_factory=list)
    load_average_end: str = ""
    wall_seconds: float = 0.0


def best_file_read(size: tp.SizeResult) -> float:
    """The faster of the two file readers (the strongest peer)."""
    return max(size.median(tp.FILE_READ), size.median(tp.FILE_READ_IDIOM))


def cheapest_file_read_cpu(size: tp.SizeResult) -> float:
    return min(size.cpu_median(tp.FILE_READ), size.cpu_median(tp.FILE_READ_IDIOM))


def ratios(size: tp.SizeResult) -> list[tuple[str, float, float]]:
    """(name, petrel/peer, target) for one size; targets are stated for 10 KiB. The
    CPU-time rows compare CPU per object (peer / petrel): the same question, less
    disturbed by other load on the machine."""
    put = size.median(tp.PUT_BATCH)
    file_cpu = cheapest_file_read_cpu(size)
    return [
        ("get_object / file read", size.median(tp.GET) / best_file_read(size), 1.5),
        ("get_object / file read, by CPU per object", file_cpu / size.cpu_median(tp.GET), 1.5),
        ("get_objects(100) / file read", size.median(tp.GET_MANY) / best_file_read(size), 3.0),
        (
            "get_objects(100) / file read, by CPU per object",
            file_cpu / size.cpu_median(tp.GET_MANY),
            3.0,
        ),
        ("put batch c=64 / file+fsync 64 threads", put / size.median(tp.FILE_FSYNC_64), 20.0),
        ("put batch c=64 / file+fsync 1 thread", put / size.median(tp.FILE_FSYNC_1), 0.0),
    ]


def summary(results: Results) -> dict[str, object]:
    """Derived numbers (rates, ratios, per-object figures) for the JSON file."""
    sizes = {}
    for size in results.sizes:
        sizes[size_label(size.size_bytes)] = {
            "objects_per_s_median": {n: round(size.median(n), 1) for n in tp.MEASURES},
            "cpu_us_per_object_median": {n: round(size.cpu_median(n), 2) for n in tp.MEASURES},
            "ratios": {name: round(value, 3) for name, value, _ in ratios(size)},
        }
    out: dict[str, object] = {"sizes": sizes}
    if results.index is not None:
        index = results.index
        out["index"] = {
            "sst_bytes_per_object": index.sst_bytes_per_object,
            "bytes_beyond_key": index.bytes_beyond_key,
            "rss_per_million_bytes": index.rss_per_million_bytes,
        }
    if results.replay is not None:
        replay = results.replay
        out["replay"] = {
            "warm_seconds_per_gib": replay.seconds_per_gib(replay.warm),
            "cold_seconds_per_gib": replay.seconds_per_gib(replay.cold),
        }
    return out


def to_json(results: Results) -> str:
    return json.dumps(
        {"results": asdict(results), "summary": summary(results)}, indent=1, default=str
    )


# ----- markdown ------------------------------------------------------------------------
def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB" if value < GiB else f"{value / GiB:,.2f} GiB"


# /sys/block/*/queue/rotational; virtual disks often claim 1 whatever backs them.
_DISK_KINDS = {"1": "reported rotational", "0": "reported non-rotational"}


def machine_lines(machine: Machine, load_end: str) -> list[str]:
    mount = machine.mount
    rows = [
        [
            "CPU",
            f"{machine.cpu_model}, {machine.cpus_online} online, "
            f"{machine.cpus_usable} usable by this process",
        ],
        ["memory", _mib(machine.memory_bytes)],
        ["kernel", machine.kernel],
        ["Python", machine.python],
        ["packages", ", ".join(f"{n} {v}" for n, v in machine.packages)],
        ["data dir", f"`{machine.data_dir}`"],
        [
            "disk",
            f"{mount.device} ({_DISK_KINDS.get(machine.disk_rotational, 'unknown')}"
            f"), {_mib(machine.disk_bytes)}, {_mib(machine.disk_free_bytes)} free",
        ],
        ["filesystem", f"{mount.filesystem} on {mount.mount_point} ({mount.options})"],
        ["load average", f"{machine.load_average} at start, {load_end} at end"],
        ["engine source", machine.source],
    ]
    return ["## Machine", "", *_table(["", ""], rows)]


def ratio_lines(results: Results) -> list[str]:
    sizes = results.sizes
    header = [
        "petrel / peer (same run)",
        *(size_label(s.size_bytes) for s in sizes),
        "target at 10 KiB",
    ]
    rows = []
    for row, (name, _, target) in enumerate(ratios(sizes[0]) if sizes else []):
        cells = [name]
        for size in sizes:
            _, value, _ = ratios(size)[row]
            met = ""
            if size.size_bytes == TARGET_SIZE_BYTES and target:
                met = " (met)" if value >= target else " (**missed**)"
            cells.append(f"{value:.2f}x{met}")
        cells.append(f">= {target:g}x" if target else "(information)")
        rows.append(cells)
    return [
        "## Headline ratios",
        "",
        "Medians over the rounds. File read: the faster (or, by CPU, the cheaper) of "
        "the two readers. Put: petrel batch c=64 against the fsync'd file writes, "
        "both from the time-boxed rounds.",
        "",
        *_table(header, rows),
    ]


def _cell(size: tp.SizeResult, name: str) -> str:
    rates = sorted(r.ops_per_s for r in size.of(name))
    median = size.median(name)
    text = f"{median:,.0f} ({median * size.size_bytes / 2**20:,.0f})"
    if len(rates) > 1:
        text += f" [{rates[0]:,.0f}-{rates[-1]:,.0f}]"
    return text


def throughput_lines(results: Results) -> list[str]:
    sizes = results.sizes
    header = ["objects/s (MiB/s)", *(f"{size_label(s.size_bytes)} (N={s.count:,})" for s in sizes)]
    rows = [[name, *(_cell(size, name) for size in sizes)] for name in tp.MEASURES]
    budget = sizes[0].rates and results.settings.sizes[0].round_budget.seconds_max
    cpu_rows = [
        [name, *(f"{size.cpu_median(name):,.1f}" for size in sizes)] for name in tp.MEASURES
    ]
    return [
        "## Throughput",
        "",
        'Measured once ("all N"), or median [min-max] over the rounds: reads over all '
        f"N objects in a fresh random order per round; durable writes time-boxed to "
        f"{budget:g} s per round into a fresh store or directory (objects done: see "
        "details).",
        "",
        *_table(header, rows),
        "CPU microseconds per object (median; the whole process, all threads, user + "
        "system; fsync waits cost no CPU):",
        "",
        *_table(["CPU us/object", *header[1:]], cpu_rows),
    ]


def detail_lines(results: Results) -> list[str]:
    lines = ["## Details", ""]
    for size in results.sizes:
        rows = [
            [
                r.name,
                str(r.round or ""),
                f"{r.ops:,}",
                f"{r.seconds:.2f}",
                f"{r.ops_per_s:,.0f}",
                f"{r.mib_per_s:,.1f}",
                f"{r.cpu_us_per_op:,.1f}",
                str(r.concurrency),
            ]
            for r in size.rates
        ]
        lines += [
            f"### {size_label(size.size_bytes)}, N = {size.count:,}",
            "",
            *_table(
                [
                    "measure",
                    "round",
                    "objects",
                    "s",
                    "objects/s",
                    "MiB/s",
                    "CPU us/object",
                    "concurrency",
                ],
                rows,
            ),
        ]
    return lines


def index_lines(index: IndexResult | None) -> list[str]:
    if index is None:
        return []
    beyond = index.bytes_beyond_key
    met = "met" if beyond <= INDEX_BEYOND_KEY_TARGET_BYTES else "**missed**"
    rows = [
        [
            "objects",
            f"{index.objects:,} x {index.payload_bytes}-byte payloads "
            f"(distinct), keys like `shard-0001/img-00001234.jpg`",
        ],
        [
            "insert",
            f"{index.insert_seconds:.1f} s ({index.objects / index.insert_seconds:,.0f}"
            " objects/s; put_objects(1000), durability none, 2 batches in flight)",
        ],
        ["flush + full compaction", f"{index.flush_compact_seconds:.1f} s"],
        ["SST bytes", f"{index.sst_bytes:,} ({index.sst_bytes_per_object:.1f} per object)"],
        [
            "average object key",
            f"{index.key_bytes_avg:.1f} bytes ({index.index_key_bytes_avg:.1f} as the RocksDB key)",
        ],
        [
            "SST bytes per object beyond the key",
            f"**{beyond:.1f}** (target <= {INDEX_BEYOND_KEY_TARGET_BYTES}: {met}); beyond the "
            f"RocksDB key: {index.sst_bytes_per_object - index.index_key_bytes_avg:.1f}",
        ],
        ["uncompressed index value", f"{index.index_value_bytes} bytes per object"],
        ["index directory (SST + WAL + MANIFEST + LOG)", f"{index.index_dir_bytes:,} bytes"],
        [
            "RSS",
            f"{_mib(index.rss_baseline_bytes)} before open, {_mib(index.rss_loaded_bytes)}"
            f" loaded, {_mib(index.rss_compacted_bytes)} after compaction, peak "
            f"{_mib(index.rss_peak_bytes)}",
        ],
        [
            "RSS per million objects",
            f"**{_mib(index.rss_per_million_bytes)}** (loaded minus "
            "before open, scaled; mostly RocksDB memtables and block "
            "cache, which are bounded, so it does not grow linearly)",
        ],
    ]
    return [f"## Index size at {index.objects:,} objects", "", *_table(["", ""], rows)]


def replay_lines(replay: ReplayResult | None) -> list[str]:
    if replay is None:
        return []
    rows = []
    for name, timing in (
        ("clean open, nothing to replay", replay.clean_open),
        ("replay, tail in page cache", replay.warm),
        ("replay, tail evicted from page cache", replay.cold),
    ):
        per_gib = replay.seconds_per_gib(timing)
        rows.append(
            [
                name,
                f"{timing.seconds:.2f}",
                f"{timing.replayed_records:,}",
                f"{per_gib:.2f}" if timing.replayed_records else "-",
                f"{timing.replayed_records / timing.seconds:,.0f}",
                _mib(max(0, timing.rss_peak_bytes - timing.rss_before_bytes)),
            ]
        )
    return [
        "## Recovery (replay of an unsealed tail)",
        "",
        f"Tail: {replay.records:,} records of {replay.object_bytes // 1024} KiB, "
        f"{_mib(replay.tail_bytes)} in one active segment, written in "
        f"{replay.write_seconds:.1f} s (durability none). Method: {replay.method}.",
        "",
        *_table(
            ["Store.open", "s", "records replayed", "s per GiB", "records/s", "peak RSS increase"],
            rows,
        ),
    ]


def profile_lines(profiles: list[Profile]) -> list[str]:
    if not profiles:
        return []
    lines = [
        "## Profiles",
        "",
        "cProfile, separate untimed runs, top 15 functions by own time "
        "(`tottime`); the cumulative view is in the JSON file.",
        "",
    ]
    for profile in profiles:
        lines += [
            f"### {profile.name}: {profile.ops:,} ops in {profile.seconds:.2f} s "
            "under the profiler",
            "",
            "```",
            profile.by_tottime,
            "```",
            "",
        ]
    return lines


METHOD_NOTES = [
    "In-process, no HTTP. Each petrel write mode writes into a fresh store with the "
    "default StoreConfig but for durability; the peer writes the same objects as one file "
    "each under `shard-XXXX/` directories (1000 files each, created before timing).",
    "Concurrency: petrel puts use 64 asyncio tasks (one event loop thread, the engine's "
    "commit thread and I/O pool); fsync'd file writes use 64 threads, and 1. Reads are "
    "single-threaded on both sides.",
    "Page cache warm on both sides: reads follow the writes; rounds alternate which side "
    "goes first. Petrel gets verify an xxh3 checksum and key per record; file reads "
    "verify nothing.",
    "File writes with fsync do not fsync the directory after creating the file, which a "
    "crash-safe writer needs; that flatters the peer.",
    "The machine is shared and noisy (2 cores): compare ratios measured in the same run, "
    "not absolute numbers across runs.",
]


def markdown(results: Results) -> str:
    settings = results.settings
    head = [
        f"# petrel engine benchmark, {results.date}",
        "",
        f"`{results.command}`: {'quick' if settings.quick else 'full'} run, "
        f"{results.wall_seconds / 60:.1f} min wall; {settings.repeats} read rounds.",
        "",
    ]
    body = (
        ratio_lines(results)
        + throughput_lines(results)
        + index_lines(results.index)
        + replay_lines(results.replay)
        + machine_lines(results.machine, results.load_average_end)
        + ["## Method", "", *(f"- {note}" for note in METHOD_NOTES), ""]
        + profile_lines(results.profiles)
        + detail_lines(results)
    )
    return "\n".join(head + body)


# ----- stdout --------------------------------------------------------------------------
def compact_table(results: Results) -> str:
    lines = []
    sizes = results.sizes
    width = 58
    if sizes:
        lines.append(
            "objects/s (median)".ljust(width)
            + "".join(size_label(s.size_bytes).rjust(12) for s in sizes)
        )
        lines.extend(
            name.ljust(width) + "".join(f"{s.median(name):12,.0f}" for s in sizes)
            for name in tp.MEASURES
        )
        for row, (name, _, target) in enumerate(ratios(sizes[0])):
            label = f"{name} (>= {target:g}x)" if target else name
            lines.append(
                label[:width].ljust(width) + "".join(f"{ratios(s)[row][1]:11.2f}x" for s in sizes)
            )
    if results.index is not None:
        index = results.index
        lines.append(
            f"index: {index.sst_bytes_per_object:.1f} SST bytes/object at "
            f"{index.objects:,}, {index.bytes_beyond_key:.1f} beyond the key; RSS "
            f"{_mib(index.rss_per_million_bytes)} per million objects"
        )
    if results.replay is not None:
        replay = results.replay
        lines.append(
            f"recovery: {replay.seconds_per_gib(replay.warm):.2f} s/GiB warm, "
            f"{replay.seconds_per_gib(replay.cold):.2f} s/GiB cold "
            f"({_mib(replay.tail_bytes)} tail)"
        )
    return "\n".join(lines)
