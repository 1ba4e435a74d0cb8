"""What the benchmark ran on: CPU, memory, kernel, Python, and the data directory's
disk and filesystem. Linux only (reads /proc and /sys); missing facts read "unknown"."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mount_point: str
    filesystem: str
    options: str


@dataclass(frozen=True, slots=True)
class Machine:
    cpu_model: str
    cpus_online: int
    cpus_usable: int
    memory_bytes: int
    kernel: str
    python: str
    packages: tuple[tuple[str, str], ...]
    data_dir: str
    mount: Mount
    disk_rotational: str
    disk_bytes: int
    disk_free_bytes: int
    load_average: str
    source: str  # the engine's git commit, and whether petrel/ had uncommitted changes


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or UNKNOWN


def memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def mount_of(path: str) -> Mount:
    """The /proc/mounts entry with the longest mount point containing `path`."""
    real = os.path.realpath(path)
    best = Mount(UNKNOWN, "", UNKNOWN, "")
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best.mount_point):
            best = Mount(fields[0], point, fields[2], fields[3])
    return best


def rotational(device: str) -> str:
    name = os.path.basename(device)
    flag = _read(f"/sys/block/{name}/queue/rotational").strip()
    if not flag:  # a partition: try its parent disk (sda1 -> sda, nvme0n1p1 -> nvme0n1)
        parent = name.rstrip("0123456789").removesuffix("p")
        flag = _read(f"/sys/block/{parent}/queue/rotational").strip()
    return flag or UNKNOWN


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set (`VmRSS`) or its peak (`VmHWM`), in bytes."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def load_average() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3]) or UNKNOWN


def source_state(repo_dir: str) -> str:
    """`<commit>` or `<commit> + uncommitted changes in N petrel/ files` (read-only git)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", repo_dir, *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD") or UNKNOWN
        changed = [
            line
            for line in git("status", "--porcelain", "--", "petrel").splitlines()
            if line.strip()
        ]
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    if not changed:
        return commit
    return f"{commit} + uncommitted changes in {len(changed)} petrel/ files"


def describe(data_dir: str) -> Machine:
    os.makedirs(data_dir, exist_ok=True)
    mount = mount_of(data_dir)
    stat = os.statvfs(data_dir)
    packages = []
    for name in ("rocksdict", "xxhash", "petrel-storage"):
        try:
            packages.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            packages.append((name, UNKNOWN))
    return Machine(
        cpu_model=cpu_model(),
        cpus_online=os.cpu_count() or 0,
        cpus_usable=len(os.sched_getaffinity(0)),
        memory_bytes=memory_bytes(),
        kernel=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        packages=tuple(packages),
        data_dir=os.path.realpath(data_dir),
        mount=mount,
        disk_rotational=rotational(mount.device),
        disk_bytes=stat.f_blocks * stat.f_frsize,
        disk_free_bytes=stat.f_bavail * stat.f_frsize,
        load_average=load_average(),
        source=source_state(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
