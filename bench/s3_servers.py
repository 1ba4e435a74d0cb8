"""The servers under test, each its own process on 127.0.0.1: petrel (`petrel serve`),
SeaweedFS (`weed server -s3`) and the bare aiohttp ceiling (`bench.s3_ceiling`).

Every server is started on free loopback ports, waited for until it answers, and stopped
by its PID (SIGTERM, then SIGKILL after a bounded wait); nothing is ever killed by name.
Resident memory is read from /proc/PID/status.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

# The SeaweedFS helpers live in petrel.testing.seaweedfs (the tests use them too); the
# bench scripts import them from here, hence the explicit re-exports.
from petrel.testing.seaweedfs import VOLUMES_MAX as WEED_VOLUMES_MAX  # noqa: F401
from petrel.testing.seaweedfs import SeaweedFS
from petrel.testing.seaweedfs import weed_binary as weed_binary
from petrel.testing.seaweedfs import weed_version as weed_version

HOST = "127.0.0.1"
# Seconds a server gets to answer after start, and to exit after SIGTERM.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2
WEED_VOLUME_SIZE_LIMIT_MB = 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclass(slots=True)
class Server:
    """A running server: its name in the report, S3 endpoint, process and log file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str
    durability: str
    command: list[str]
    # SeaweedFS only: `-master=... -filer=...` for `weed shell` against this server.
    shell_args: tuple[str, ...] = ()
    data_dir: str = ""  # where it keeps its data ("" for the ceiling)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    """A port the kernel had free a moment ago (a race with other binders is possible,
    and shows up as a start failure naming the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of one process, from /proc/PID/status (0s if it is gone).
    rss = anon + file (+ shmem): `file` counts pages of mapped files (petrel maps sealed
    segments), which the kernel can drop and which other processes share; `anon` is the
    process's own heap, stacks and allocator arenas: where a leak shows."""

    rss_bytes: int
    anon_bytes: int
    file_bytes: int


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (petrel's reader processes and its sealer)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _stat_fields(path: str) -> list[str]:
    """The fields of a /proc stat file after the command name (state first)."""
    with open(path, encoding="ascii") as handle:
        return handle.read().rpartition(")")[2].split()


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of `pid` (all threads), or of its thread `tid`, from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = _stat_fields(path)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def minor_faults(pid: int) -> int:
    """Minor page faults of `pid` so far (all threads), from /proc."""
    return int(_stat_fields(f"/proc/{pid}/stat")[7])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by `pid` and the processes under it (running ones)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(member)
        except OSError:  # exited meanwhile
            continue
    return total


def memory(pid: int) -> Memory:
    """Summed over `pid` and its descendants: a server is all its processes (pages of
    files two of them map are counted twice in `file`)."""
    fields = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    for member in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{member}/status", encoding="ascii", errors="replace") as handle:
                for line in handle:
                    name, _, value = line.partition(":")
                    if name in fields:
                        fields[name] += int(value.split()[0]) * 1024
        except OSError:
            continue
    return Memory(fields["VmRSS"], fields["RssAnon"], fields["RssFile"])


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and its descendants in bytes; 0 if they are gone."""
    return memory(pid).rss_bytes


def _metrics_text(server: Server) -> str | None:
    try:
        with urllib.request.urlopen(server.endpoint + "/metrics", timeout=5) as response:
            return str(response.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError):
        return None


def petrel_objects(server: Server) -> int | None:
    """`petrel_objects` from the gateway's /metrics (None if unavailable)."""
    text = _metrics_text(server)
    for line in (text or "").splitlines():
        if line.startswith("petrel_objects "):
            return int(float(line.split()[1]))
    return None


def petrel_index_memory(server: Server) -> int | None:
    """Bytes RocksDB holds for the index (memtables, block cache, table readers: the sum
    of `petrel_index_memory_bytes`), None if unavailable. Bounded caches: resident
    memory that grows with them is the caches filling, not a leak."""
    text = _metrics_text(server)
    values = [float(line.split()[1]) for line in (text or "").splitlines()
              if line.startswith("petrel_index_memory_bytes{")]
    return int(sum(values)) if values else None


def _spawn(command: list[str], log_path: str, env: dict[str, str] | None = None,
           cwd: str | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)


def _wait_http(server: Server, path: str, ok_statuses: tuple[int, ...]) -> None:
    """Poll `path` until it answers one of `ok_statuses`; raise if the process exits or
    START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    url = server.endpoint + path
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}; "
                               f"see {server.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in ok_statuses:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok_statuses:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"{server.name} did not answer {url} within {START_TIMEOUT_S} s")


@dataclass(frozen=True, slots=True)
class SourceTree:
    """Another checkout of petrel to run a gateway from (bench.ab): `root` holds its
    `petrel/` (found first as the working directory of `python -m petrel`) and
    `import_root` a `petrel_gateway` link to its `gateway/` (put on PYTHONPATH, ahead of
    the installed tree's)."""

    root: str
    import_root: str

    @classmethod
    def link(cls, root: str, scratch_dir: str) -> SourceTree:
        import_root = os.path.join(scratch_dir, "import-root")
        os.makedirs(import_root, exist_ok=True)
        os.symlink(os.path.join(root, "gateway"), os.path.join(import_root, "petrel_gateway"))
        return cls(root, import_root)


def start_petrel(name: str, data_dir: str, durability: str, creds: Credentials,
                 log_dir: str, processes: int = 0, source: SourceTree | None = None
                 ) -> Server:
    """`petrel serve` on 127.0.0.1; from `source` (another checkout) if given, else
    from the installed (this) tree."""
    port = free_port()
    command = [sys.executable, "-m", "petrel", "serve", "--data", data_dir, "--host", HOST,
               "--port", str(port), "--access-key", creds.access_key,
               "--secret-key", creds.secret_key, "--durability", durability,
               "--log-level", "warning", "--processes", str(processes)]
    os.makedirs(data_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    env = cwd = None
    if source is not None:
        env, cwd = {**os.environ, "PYTHONPATH": source.import_root}, source.root
    server = Server(name, port, _spawn(command, log_path, env, cwd), log_path, durability,
                    command, data_dir=data_dir)
    _wait_http(server, "/healthz", (200,))
    return server


def start_seaweedfs(name: str, data_dir: str, creds: Credentials, log_dir: str) -> Server:
    """`weed server` with master, volume, filer and S3 in one process, every port on
    127.0.0.1 (petrel.testing.seaweedfs, shared with the tests). Durability:
    SeaweedFS's default; no fsync unless a path is configured with `fs.configure -fsync`
    (see `weed_set_fsync`)."""
    os.makedirs(data_dir, exist_ok=True)
    weed = SeaweedFS.create(data_dir, os.path.join(log_dir, f"{name}.log"),
                            access_key=creds.access_key, secret_key=creds.secret_key,
                            volume_size_limit_mb=WEED_VOLUME_SIZE_LIMIT_MB)
    weed.start(timeout_s=START_TIMEOUT_S)
    assert weed.process is not None
    return Server(name, weed.ports["s3"], weed.process, weed.log_path,
                  "no fsync (SeaweedFS default)", weed.command(),
                  shell_args=weed.shell_args, data_dir=data_dir)


def weed_shell(server: Server, script: str) -> str:
    """Run `weed shell` commands against `server`; returns its output (bounded)."""
    done = subprocess.run([weed_binary(), "shell", *server.shell_args], input=script + "\nexit\n",
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"weed shell failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def weed_set_fsync(server: Server, bucket: str) -> None:
    """Make SeaweedFS fsync every needle written under /buckets/BUCKET/ before the reply
    (the volume server's `fsync` write flag; filer metadata is still not synced)."""
    out = weed_shell(server, f"fs.configure -locationPrefix=/buckets/{bucket}/ -fsync -apply")
    if '"fsync":  true' not in out and '"fsync": true' not in out:
        raise RuntimeError(f"fs.configure -fsync did not apply: {out[-2000:]}")


def start_ceiling(size_bytes: int, log_dir: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.s3_ceiling", "--host", HOST, "--port", str(port),
               "--size-bytes", str(size_bytes)]
    log_path = os.path.join(log_dir, f"ceiling-{size_bytes}.log")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    server = Server(f"ceiling-{size_bytes}", port, _spawn(command, log_path, env), log_path,
                    "n/a (no storage)", command)
    _wait_http(server, "/healthz", (200,))
    return server


def stop(server: Server) -> int | None:
    """SIGTERM the server's PID, wait up to STOP_TIMEOUT_S, then SIGKILL; returns the exit
    status (None if it had to be killed)."""
    process = server.process
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
        return None


# Bytes read to warm the page cache before a GET run, at most (a run never reads more).
PREWARM_BYTES_MAX = 16 * 1024**3
_PREWARM_CHUNK_BYTES = 8 * 1024 * 1024


def prewarm(data_dir: str) -> tuple[int, float]:
    """Read every file under `data_dir` once (up to PREWARM_BYTES_MAX) so a GET run
    starts from a page cache holding the server's data, whoever the server is. Returns
    (bytes read, seconds)."""
    started = time.monotonic()
    total = 0
    for root, _, files in os.walk(data_dir):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb", buffering=0) as handle:
                    while total < PREWARM_BYTES_MAX:
                        chunk = handle.read(_PREWARM_CHUNK_BYTES)
                        if not chunk:
                            break
                        total += len(chunk)
            except OSError:
                continue  # removed or unreadable meanwhile (compaction, a lock file)
    return total, time.monotonic() - started


def disk_read_bytes(device: str) -> int:
    """Bytes read from block device `device` (/dev/vda or vda) since boot (diskstats);
    0 when it is not listed."""
    name = os.path.basename(device)
    try:
        with open("/proc/diskstats", encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 5 and fields[2] == name:
                    return int(fields[5]) * 512
    except OSError:
        return 0
    return 0
