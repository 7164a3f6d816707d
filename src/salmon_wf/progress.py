"""Progress lines for long stages: counted work (done/total, rate, ETA) or timed steps.

Shard stages count items (`update`: at most one line every 5 s, and the last); the aggregation
times its steps (`step`: one line per step with its seconds and the peak memory so far). No
torch import, so cheap stages can use it.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import TextIO

UPDATE_EVERY_S = 5.0


class Progress:
    """Progress of one stage under `label`; only an enabled one (rank 0) prints."""

    def __init__(
        self,
        label: str,
        total: int = 0,
        done: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total, self.done = label, total, done
        self.start_done, self.enabled = done, enabled
        self.stream = stream  # None: sys.stderr when a line is printed (so capture sees it)
        self.started = self.last = time.monotonic()

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1, extra: str = "") -> None:
        """`n` more items done: `[label] done/total (rate/s, eta Ns) extra`."""
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.last < UPDATE_EVERY_S and self.done < self.total):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = f"[{self.label}] {self.done}/{self.total} ({rate:.2f}/s, eta {eta:.0f}s) {extra}"
        self._print(line.rstrip())

    def step(self, what: str) -> None:
        """A step finished: `label: what (seconds since the last step, peak memory)`."""
        now = time.monotonic()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        if self.enabled:
            self._print(f"{self.label}: {what} ({now - self.last:.1f} s, peak {peak / 1e9:.2f} GB)")
        self.last = now
