"""A local stack on 127.0.0.1: SeaweedFS (`weed server -s3`) and a petrel gateway that
uses it as its S3 backend. Run through deploy/local-stack/run.sh:

    run.sh start [--port N] [--seal-idle-s S]   start both, wait until healthy, print
                                                endpoints and credentials
    run.sh status [--json]                      exit 0 when both answer their health check
    run.sh stop                                 SIGTERM petrel (it seals and uploads),
                                                then SeaweedFS; SIGKILL after a bound

Everything lives in one state directory (`--state-dir`, else $PETREL_STACK_DIR, else
deploy/local-stack/.state): data of both servers, their logs, PID files, generated keys
and `stack.json` (endpoints, ports, PIDs). Keys are generated on the first start and
kept, so a restarted stack serves the same data with the same keys.

Processes are stopped by the PID in their PID file, and only after /proc/PID/cmdline
shows it is still the process this stack started (a PID may be reused); never by name.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

HOST = "127.0.0.1"
BACKEND_BUCKET = "petrel"
BACKEND_PREFIX = "stack"
# Bounds on every wait: start of each server, and its exit after SIGTERM. petrel's stop
# drains for up to shutdown_drain_s (30 s) and then uploads the last segment.
START_TIMEOUT_S = 90.0
PETREL_STOP_TIMEOUT_S = 90.0
WEED_STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
DEFAULT_STATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".state")
EXIT_NOT_RUNNING = 3  # LSB: "program is not running"


@dataclass(frozen=True, slots=True)
class Keys:
    access_key: str
    secret_key: str


@dataclass(frozen=True, slots=True)
class StackInfo:
    """What `stack.json` holds: enough to reach and to stop both servers."""

    state_dir: str
    petrel_endpoint: str
    petrel_pid: int
    petrel_data_dir: str
    seaweedfs_endpoint: str
    seaweedfs_pid: int
    seaweedfs_data_dir: str
    seaweedfs_ports: dict[str, int]
    backend_url: str
    client_keys: Keys
    backend_keys: Keys


class StackError(RuntimeError):
    """A start or stop that could not complete; the message says why and where to look."""


# ----- state ---------------------------------------------------------------------------
def _paths(state_dir: str) -> dict[str, str]:
    return {name: os.path.join(state_dir, leaf) for name, leaf in (
        ("info", "stack.json"), ("petrel_pid", "petrel.pid"), ("weed_pid", "seaweedfs.pid"),
        ("petrel_data", "petrel"), ("weed_data", "seaweedfs"), ("petrel_log", "petrel.log"),
        ("weed_log", "seaweedfs.log"), ("config", "petrel.toml"), ("keys", "keys.json"),
        ("credentials", "credentials"))}


def _new_keys(prefix: str) -> Keys:
    alphabet = string.ascii_uppercase + string.digits
    access = prefix + "".join(secrets.choice(alphabet) for _ in range(20 - len(prefix)))
    return Keys(access, secrets.token_urlsafe(30)[:40])


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _load_or_create_keys(paths: dict[str, str]) -> tuple[Keys, Keys]:
    """(client keys, backend keys): generated once, then read back."""
    if os.path.exists(paths["keys"]):
        with open(paths["keys"], encoding="utf-8") as handle:
            saved = json.load(handle)
        return Keys(**saved["client"]), Keys(**saved["backend"])
    client, backend = _new_keys("PK"), _new_keys("SW")
    _write_private(paths["keys"], json.dumps({"client": asdict(client),
                                              "backend": asdict(backend)}))
    return client, backend


def _read_info(state_dir: str) -> StackInfo | None:
    try:
        with open(_paths(state_dir)["info"], encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return None
    raw["client_keys"] = Keys(**raw["client_keys"])
    raw["backend_keys"] = Keys(**raw["backend_keys"])
    return StackInfo(**raw)


# ----- processes -----------------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0")]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ours(pid: int, marker: str) -> bool:
    """Is `pid` still the process we started? Its command line names our data dir."""
    return _alive(pid) and any(marker in part for part in _cmdline(pid))


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _stop_pid(pid_file: str, marker: str, timeout_s: float, name: str) -> str:
    pid = _read_pid(pid_file)
    if pid is None:
        return f"{name}: not running (no PID file)"
    if not _ours(pid, marker):
        os.unlink(pid_file)
        return f"{name}: not running (stale PID file, pid {pid})"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    outcome = "stopped"
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        outcome = f"killed (no exit {timeout_s:.0f} s after SIGTERM)"
    os.unlink(pid_file)
    return f"{name}: {outcome} (pid {pid})"


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _wait_healthy(url: str, pid: int, log_path: str, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"{name} exited during start; see {log_path}:\n"
                             f"{_tail(log_path)}")
        if _http_status(url) == 200:
            return
        time.sleep(POLL_INTERVAL_S)
    raise StackError(f"{name} did not answer {url} within {START_TIMEOUT_S:.0f} s; "
                     f"see {log_path}")


def _tail(path: str, size_bytes: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - size_bytes))
            return handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"


# ----- start ---------------------------------------------------------------------------
def _free_port() -> int:
    from petrel.testing.seaweedfs import free_port

    return free_port()


def _start_seaweedfs(paths: dict[str, str], keys: Keys) -> tuple[str, int, dict[str, int]]:
    from petrel.testing.seaweedfs import SeaweedFS

    weed = SeaweedFS.create(paths["weed_data"], paths["weed_log"],
                            access_key=keys.access_key, secret_key=keys.secret_key)
    weed.start(timeout_s=START_TIMEOUT_S)  # waits until its S3 gateway answers
    assert weed.pid is not None
    with open(paths["weed_pid"], "w", encoding="ascii") as handle:
        handle.write(f"{weed.pid}\n")
    try:
        _wait_healthy(weed.endpoint + "/healthz", weed.pid, paths["weed_log"], "SeaweedFS")
        if BACKEND_BUCKET not in weed.shell("s3.bucket.list").split():
            weed.shell(f"s3.bucket.create -name {BACKEND_BUCKET}")
    except BaseException:
        _stop_pid(paths["weed_pid"], paths["weed_data"], WEED_STOP_TIMEOUT_S, "SeaweedFS")
        raise
    # The Popen object goes away with this process; SeaweedFS runs on in its own session.
    weed.process = None
    return weed.endpoint, _read_pid(paths["weed_pid"]) or 0, dict(weed.ports)


def _check_backend_flags(python: str) -> None:
    done = subprocess.run([python, "-m", "petrel", "serve", "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    if "--backend-endpoint" not in done.stdout:
        raise StackError("this petrel has no S3 backend flags (`petrel serve --backend "
                         "s3://BUCKET/PREFIX --backend-endpoint URL`, issue 6)")


def _write_config(path: str, seal_idle_s: float) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# Written by deploy/local-stack/stack.py on every start.\n"
                     "[server]\nlog_level = \"info\"\n\n"
                     f"[store]\ndurability = \"batch\"\nseal_idle_s = {seal_idle_s!r}\n")


def _start_petrel(paths: dict[str, str], port: int, weed_endpoint: str, backend_url: str,
                  client: Keys, backend: Keys) -> int:
    python = sys.executable
    _write_private(paths["credentials"], f"{client.access_key}:{client.secret_key}\n")
    command = [python, "-m", "petrel", "serve", "--config", paths["config"],
               "--data", paths["petrel_data"], "--host", HOST, "--port", str(port),
               "--credentials-file", paths["credentials"],
               "--backend", backend_url, "--backend-endpoint", weed_endpoint,
               "--backend-path-style"]
    env = dict(os.environ, PETREL_BACKEND_ACCESS_KEY=backend.access_key,
               PETREL_BACKEND_SECRET_KEY=backend.secret_key)
    os.makedirs(paths["petrel_data"], exist_ok=True)
    with open(paths["petrel_log"], "ab") as log:
        log.write(f"\n==== start: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    with open(paths["petrel_pid"], "w", encoding="ascii") as handle:
        handle.write(f"{process.pid}\n")
    try:
        _wait_healthy(f"http://{HOST}:{port}/healthz", process.pid, paths["petrel_log"],
                      "petrel")
    except BaseException:
        _stop_pid(paths["petrel_pid"], paths["petrel_data"], PETREL_STOP_TIMEOUT_S,
                  "petrel")
        raise
    return process.pid


def start(state_dir: str, port: int | None, seal_idle_s: float) -> StackInfo:
    """Start SeaweedFS, then petrel over it; both healthy on return. Raises StackError
    (both stopped again) when either fails, or when the stack already runs."""
    paths = _paths(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    for pid_file, marker in ((paths["petrel_pid"], paths["petrel_data"]),
                             (paths["weed_pid"], paths["weed_data"])):
        pid = _read_pid(pid_file)
        if pid is not None and _ours(pid, marker):
            raise StackError(f"already running (pid {pid}); `run.sh stop` first")
    _check_backend_flags(sys.executable)
    client, backend = _load_or_create_keys(paths)
    _write_config(paths["config"], seal_idle_s)
    weed_endpoint, weed_pid, weed_ports = _start_seaweedfs(paths, backend)
    backend_url = f"s3://{BACKEND_BUCKET}/{BACKEND_PREFIX}"
    petrel_port = port if port is not None else _free_port()
    try:
        petrel_pid = _start_petrel(paths, petrel_port, weed_endpoint, backend_url, client,
                                   backend)
    except BaseException:
        _stop_pid(paths["weed_pid"], paths["weed_data"], WEED_STOP_TIMEOUT_S, "SeaweedFS")
        raise
    info = StackInfo(state_dir, f"http://{HOST}:{petrel_port}", petrel_pid,
                     paths["petrel_data"], weed_endpoint, weed_pid, paths["weed_data"],
                     weed_ports, backend_url, client, backend)
    with open(paths["info"], "w", encoding="utf-8") as handle:
        json.dump(asdict(info), handle, indent=2)
    return info


# ----- stop / status -------------------------------------------------------------------
def stop(state_dir: str) -> list[str]:
    """petrel first (SIGTERM: drain, seal, upload to SeaweedFS), then SeaweedFS."""
    paths = _paths(state_dir)
    return [_stop_pid(paths["petrel_pid"], paths["petrel_data"], PETREL_STOP_TIMEOUT_S,
                      "petrel"),
            _stop_pid(paths["weed_pid"], paths["weed_data"], WEED_STOP_TIMEOUT_S,
                      "SeaweedFS")]


def status(state_dir: str) -> dict[str, object]:
    info = _read_info(state_dir)
    paths = _paths(state_dir)
    report: dict[str, object] = {"state_dir": state_dir, "healthy": False}
    if info is None:
        return report
    petrel_pid, weed_pid = _read_pid(paths["petrel_pid"]), _read_pid(paths["weed_pid"])
    petrel_up = petrel_pid is not None and _ours(petrel_pid, paths["petrel_data"]) and \
        _http_status(info.petrel_endpoint + "/healthz") == 200
    weed_up = weed_pid is not None and _ours(weed_pid, paths["weed_data"]) and \
        _http_status(info.seaweedfs_endpoint + "/healthz") == 200
    report.update(asdict(info), petrel_healthy=petrel_up, seaweedfs_healthy=weed_up,
                  healthy=petrel_up and weed_up)
    return report


def _print_started(info: StackInfo) -> None:
    print(f"""petrel local stack is up (state in {info.state_dir})
  petrel S3 endpoint:    {info.petrel_endpoint}   (pid {info.petrel_pid})
    access key:          {info.client_keys.access_key}
    secret key:          {info.client_keys.secret_key}
  SeaweedFS S3 endpoint: {info.seaweedfs_endpoint}   (pid {info.seaweedfs_pid})
    backend:             {info.backend_url}
    access key:          {info.backend_keys.access_key}
    secret key:          {info.backend_keys.secret_key}
  metrics:               {info.petrel_endpoint}/metrics

export AWS_ACCESS_KEY_ID={info.client_keys.access_key} \
AWS_SECRET_ACCESS_KEY={info.client_keys.secret_key} AWS_DEFAULT_REGION=us-east-1
aws --endpoint-url {info.petrel_endpoint} s3 ls""", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=os.environ.get("PETREL_STACK_DIR",
                                                              DEFAULT_STATE_DIR))
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start", help="start SeaweedFS and petrel")
    start_parser.add_argument("--port", type=int, help="petrel's port (default: a free one)")
    start_parser.add_argument("--seal-idle-s", type=float, default=300.0,
                              help="seal and upload a segment idle this long (default 300)")
    status_parser = sub.add_parser("status", help="exit 0 when both servers are healthy")
    status_parser.add_argument("--json", action="store_true")
    sub.add_parser("stop", help="stop petrel, then SeaweedFS")
    args = parser.parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)
    try:
        if args.command == "start":
            _print_started(start(state_dir, args.port, args.seal_idle_s))
            return 0
        if args.command == "stop":
            print("\n".join(stop(state_dir)))
            return 0
        report = status(state_dir)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"petrel: {'healthy' if report.get('petrel_healthy') else 'down'}, "
                  f"SeaweedFS: {'healthy' if report.get('seaweedfs_healthy') else 'down'}")
        return 0 if report["healthy"] else EXIT_NOT_RUNNING
    except StackError as exc:
        print(f"local-stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
