"""Progress on stderr when it is a terminal (a bar, or a line per finished item); silence
otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and total > 1
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
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}{end}")
        self.stream.flush()


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
