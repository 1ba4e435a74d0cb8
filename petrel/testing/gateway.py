"""A petrel gateway in its own process, started the way users start it
(`python -m petrel serve`), on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    endpoint: str
    port: int
    data_dir: str
    process: subprocess.Popen[bytes]
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def start_gateway(data_dir: str, *extra: str, env: dict[str, str] | None = None,
                  timeout_s: float = 30.0) -> Gateway:
    port = free_port()
    log_path = os.path.join(os.path.dirname(data_dir), f"gateway-{port}.log")
    command = [sys.executable, "-m", "petrel", "serve", "--data", data_dir,
               "--host", "127.0.0.1", "--port", str(port), *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    gateway = Gateway(f"http://127.0.0.1:{port}", port, data_dir, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited {process.returncode}:\n{gateway.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return gateway
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"gateway did not start in {timeout_s}s:\n{gateway.log()}")


def stop_gateway(gateway: Gateway, timeout_s: float = 30.0) -> int:
    if gateway.process.poll() is None:
        gateway.process.terminate()
        try:
            gateway.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()
    return gateway.process.returncode
