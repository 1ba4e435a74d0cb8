"""The link between the gateway's primary process and one reader process: a Unix
socket pair carrying framed messages, some with a file descriptor attached.

A message is a kind byte, a 4-byte big-endian payload length, and the payload. A
connection handed to the primary travels as its socket's descriptor (SCM_RIGHTS)
attached to the first byte of its message.

    reader -> primary   HAND_OVER  descriptor + the bytes received and not answered
                        SAMPLES    the reader's request metrics (reply to COLLECT)
                        TOUCHED    read-cache blocks the reader read (for the LRU)
    primary -> reader   COLLECT    metrics, please
                        SETTINGS   reloaded settings (pickled GatewaySettings)
"""

from __future__ import annotations

import contextlib
import copyreg
import socket
import struct
import threading
import types

HAND_OVER, SAMPLES, TOUCHED, COLLECT, SETTINGS = b"H", b"R", b"T", b"M", b"S"
_HEADER = struct.Struct(">cI")
# A payload larger than this is a bug on the other side, not a message.
_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024


# Settings hold read-only mappings (QoS limits by key and bucket); they travel pickled.
def read_only(mapping: dict[object, object]) -> types.MappingProxyType[object, object]:
    return types.MappingProxyType(mapping)


copyreg.pickle(types.MappingProxyType, lambda proxy: (read_only, (dict(proxy),)))


class ChannelClosed(Exception):
    """The other end is gone."""


class Channel:
    """One end of the pair. `send` may be called from any thread; `receive` from one
    thread only (it blocks)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, kind: bytes, payload: bytes = b"", fd: int | None = None) -> None:
        """Raises ChannelClosed if the other end is gone."""
        message = _HEADER.pack(kind, len(payload)) + payload
        try:
            with self._send_lock:
                if fd is None:
                    self._sock.sendall(message)
                    return
                sent = socket.send_fds(self._sock, [message], [fd])
                if sent < len(message):
                    self._sock.sendall(message[sent:])
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def receive(self) -> tuple[bytes, bytes, int | None]:
        """(kind, payload, descriptor or None). Raises ChannelClosed at the end."""
        header, fd = self._read_header()
        kind, length = _HEADER.unpack(header)
        if length > _PAYLOAD_BYTES_MAX:
            if fd is not None:
                socket.close(fd)
            raise ChannelClosed(f"a {length}-byte message: the channel is out of step")
        payload = self._read_exactly(length)
        return kind, payload, fd

    def _read_header(self) -> tuple[bytes, int | None]:
        # The descriptor rides on the message's first byte: read the header with room
        # for it, then the rest plainly.
        try:
            data, fds, _flags, _address = socket.recv_fds(
                self._sock, _HEADER.size, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if not data:
            for stray in fds:
                socket.close(stray)
            raise ChannelClosed("end of channel")
        fd = fds[0] if fds else None
        if len(data) < _HEADER.size:
            try:
                data += self._read_exactly(_HEADER.size - len(data))
            except ChannelClosed:
                if fd is not None:
                    socket.close(fd)
                raise
        return data, fd

    def _read_exactly(self, count: int) -> bytes:
        chunks = []
        while count:
            try:
                chunk = self._sock.recv(min(count, 1024 * 1024))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if not chunk:
                raise ChannelClosed("end of channel inside a message")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
