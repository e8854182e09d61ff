"""The progress bar of `bceloss eval`: one line on stderr, only on a terminal."""

from __future__ import annotations

import time


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only for long runs."""

    DELAY = 0.5  # seconds before the bar appears: short runs print nothing
    EVERY = 0.1  # seconds between redraws

    def __init__(self, total: int, stream, enabled: bool = True) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = enabled and stream.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def __call__(self, rows: int) -> None:
        """Count `rows` more rows done."""
        self.done += rows
        now = time.monotonic()
        if not self.enabled or now - self.start < self.DELAY or now - self.last < self.EVERY:
            return
        self.last, self.drawn = now, True
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * share)
        self.stream.write(f"\r[{bar:<30}] {share:6.1%}  {self.done:,} of {self.total:,} rows")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
