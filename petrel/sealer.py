"""Sealing segments in a process of its own.

`segments.seal_file` re-reads and verifies every record of a segment (up to 256 MiB,
tens of thousands of records: a fifth of a second of Python) before it writes the
footer. In a thread of the gateway it holds the GIL against the event loop, and the
loop, which gives the GIL up at every system call, waits up to the 5 ms switch interval
each time to get it back: every request stalls for as long as the seal runs (10 KiB PUT
p99 under wrk: 120-140 ms with seals in a thread, 21-35 ms with this process). The process
also keeps the mapped segment's pages out of the gateway's resident memory.

One child (`python -m petrel.sealer`), started on the first seal (and again after it
dies), seals one segment at a time for its parent over a pipe: a request is a path, an
answer the SealResult or the exception `seal_file` raised, each pickled (parent and
child are the same program) and length-prefixed. The child exits when its stdin closes
(the parent closed the store), and within `PARENT_CHECK_S` of its parent's death, killed
or not (a watchdog thread sees its parent process id change), so it does not go on
writing a footer under a store that another process has reopened. (PR_SET_PDEATHSIG would
follow the thread that started the child, a worker thread here, not the process.) It ignores
SIGINT: a Ctrl-C reaches the whole process group, and the parent still seals while it
shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

from petrel.segments import SealResult, seal_file

_LENGTH = struct.Struct("<Q")
PARENT_CHECK_S = 0.2
STOP_TIMEOUT_S = 30.0  # a seal in progress is let finish when the store closes


class SealProcessLost(Exception):
    """The seal process died or answered nonsense; the seal did not (surely) happen."""


def _send(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next value on `stream`; EOFError if it ends before one is whole."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the pipe closed")
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the pipe closed inside a message")
    return pickle.loads(data)


class SealProcess:
    """The parent's handle on the seal process. `seal` blocks (call it in a worker
    thread) and runs one seal at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None

    def seal(self, path: str) -> SealResult:
        """`seal_file(path)` in the child: its result, or the exception it raised.
        Raises SealProcessLost if the child is gone (it is started again next time)."""
        with self._lock:
            child = self._started()
            assert child.stdin is not None and child.stdout is not None
            try:
                _send(child.stdin, path)
                ok, value = _receive(child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
                self._reap()
                raise SealProcessLost(f"the seal process is gone ({exc})") from exc
        if ok:
            assert isinstance(value, SealResult)
            return value
        raise value

    @property
    def pid(self) -> int | None:
        """The child's process id, while one is running (tests, diagnostics)."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is not None:
            self._reap()  # died while idle: start another
        if self._child is None:
            try:
                self._child = subprocess.Popen(
                    [sys.executable, "-m", "petrel.sealer", str(os.getpid())],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            except OSError as exc:
                raise SealProcessLost(f"cannot start the seal process ({exc})") from exc
        return self._child

    def _reap(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def close(self) -> None:
        """Let a seal in progress finish, then stop the child."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def _exit_with(parent_pid: int) -> None:
    """In a daemon thread: exit the moment the parent is gone (this process is then
    adopted by another, and its parent id changes), even in the middle of a seal."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(int(argv[0]),), name="parent-watch",
                     daemon=True).start()
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s (seal process) %(message)s")
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            path = _receive(requests)
        except EOFError:
            return
        try:
            outcome: tuple[bool, Any] = (True, seal_file(path))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
            outcome = (False, exc)
        try:
            pickle.dumps(outcome)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            # The parent then seals in a thread of its own, where it sees the original.
            outcome = (False, SealProcessLost(f"seal_file raised {exc!r}"))
        _send(answers, outcome)


if __name__ == "__main__":
    main(sys.argv[1:])
