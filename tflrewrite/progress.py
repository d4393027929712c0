"""Progress on stderr when it is a terminal (a bar, or a line per finished item); silence
otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`bar(done)` redraws "label [####....] done/total, elapsed, ETA" at most ten times
    a second; the ETA assumes the rest goes at the pace so far."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and total > 1
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = width * done // self.total
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= self.total else ""
        times = self.times(done, now)
        # \x1b[K clears what a longer line before left (only a terminal gets here)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {times}\x1b[K{end}")
        self.stream.flush()

    def times(self, done: int, now: float) -> str:
        """Elapsed time, and the ETA while not done."""
        elapsed = now - self.started
        if done >= self.total:
            return clock(elapsed)
        eta = clock(elapsed * (self.total - done) / done) if done else "--:--"
        return f"{clock(elapsed)}, ETA {eta}"


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour."""
    s = int(seconds + 0.5)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Lines:
    """One line per finished item on stderr when it is a terminal: `label [k/total] text`."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()

    def __call__(self, text: str) -> None:
        self.done += 1
        if self.enabled:
            self.stream.write(f"{self.label} [{self.done}/{self.total}] {text}\n")
            self.stream.flush()
