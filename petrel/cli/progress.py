"""A one-line progress bar on stderr: files, bytes, rate and ETA.

Drawn only when stderr is a terminal (and not --quiet), at most `REDRAW_S` apart, so a
log file or a CI run never fills up with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.2
BAR_WIDTH = 24


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts files and bytes done; `total_bytes` (of the source, when known) gives the
    bar and the ETA. `position_bytes` is how far through the source we are, which for a
    compressed tar differs from the bytes stored."""

    def __init__(self, *, enabled: bool, total_files: int | None = None,
                 total_bytes: int | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.skipped = 0
        self.failed = 0
        self.position_bytes = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    @staticmethod
    def wanted(quiet: bool, stream: TextIO | None = None) -> bool:
        target = stream or sys.stderr
        return not quiet and target.isatty()

    def advance(self, *, files: int = 0, size: int = 0, skipped: int = 0,
                failed: int = 0, position_bytes: int | None = None) -> None:
        self.files += files
        self.bytes += size
        self.skipped += skipped
        self.failed += failed
        if position_bytes is not None:
            self.position_bytes = position_bytes
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= REDRAW_S:
            self._drawn_at = now
            self._draw(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed_s = max(1e-6, (now or time.monotonic()) - self.started)
        rate = self.bytes / elapsed_s
        files = f"{self.files + self.skipped}"
        if self.total_files is not None:
            files += f"/{self.total_files}"
        parts = [f"{files} files", human_bytes(self.bytes),
                 f"{human_bytes(rate)}/s", f"{self.files / elapsed_s:.0f} files/s"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.total_bytes:
            fraction = min(1.0, self.position_bytes / self.total_bytes)
            filled = int(fraction * BAR_WIDTH)
            speed = self.position_bytes / elapsed_s
            eta = (self.total_bytes - self.position_bytes) / speed if speed > 0 else 0.0
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            parts.insert(0, f"[{bar}] {fraction:4.0%}")
            parts.append(f"ETA {human_duration(eta)}")
        return "  ".join(parts)

    def _draw(self, text: str) -> None:
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the line (when enabled)."""
        if self.enabled:
            self._draw(self.line())
            self.stream.write("\n")
            self.stream.flush()
