"""Progress lines for long stages: counted work (done/total, rate, ETA) or timed steps.

Shard stages count items (`update`): on a terminal, a tqdm bar (when tqdm is installed); into a
log file, at most one line every 5 s and the last, `[label] done/total unit, R resumed (rate/s,
T tokens/s, eta Ns) extra`, the resumed items (done by an earlier run) not counted in the
rates. The aggregation times its steps (`step`: one line per step with its seconds and the peak
memory so far). No torch import, so cheap stages can use it.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, TextIO

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
        unit: str = "",
        bar: bool | None = None,
    ) -> None:
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.start_done, self.enabled, self.tokens = done, enabled, 0
        self.stream = stream  # None: sys.stderr when a line is printed (so capture sees it)
        self.started = self.last = time.monotonic()
        self._bar: Any = None
        if bar is None:  # a bar only where someone watches: a terminal
            bar = total > 0 and enabled and bool(getattr(stream or sys.stderr, "isatty", bool)())
        if bar and enabled:
            self._bar = _tqdm_bar(label, total, done, unit, stream or sys.stderr)

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1, extra: str = "", tokens: int | None = None) -> None:
        """`n` more items done; `tokens`: tokens processed so far by this run (for tokens/s)."""
        self.done += n
        self.tokens = self.tokens if tokens is None else tokens
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(n)
            rate = self.tokens / max(now - self.started, 1e-9)
            self._bar.set_postfix_str(f"{rate:.1f} tokens/s {extra}".rstrip(), refresh=False)
            if self.done >= self.total:
                self._bar.close()
            return
        if not self.enabled or (now - self.last < UPDATE_EVERY_S and self.done < self.total):
            return
        self.last = now
        self._print(self.line(now - self.started, extra))

    def line(self, elapsed: float, extra: str = "") -> str:
        """The progress line after `elapsed` seconds of this run."""
        elapsed = max(elapsed, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        head = f"[{self.label}] {self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")
        if self.start_done:
            head += f", {self.start_done} resumed"
        rates = f"{rate:.2f}/s" + (f", {self.tokens / elapsed:.1f} tokens/s" if self.tokens else "")
        return f"{head} ({rates}, eta {eta:.0f}s) {extra}".rstrip()

    def step(self, what: str) -> None:
        """A step finished: `label: what (seconds since the last step, peak memory)`."""
        now = time.monotonic()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        if self.enabled:
            self._print(f"{self.label}: {what} ({now - self.last:.1f} s, peak {peak / 1e9:.2f} GB)")
        self.last = now


def _tqdm_bar(label: str, total: int, done: int, unit: str, stream: TextIO) -> Any:
    """A tqdm bar starting at `done` (the resumed items), or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc=label, unit=f" {unit or 'it'}", file=stream)
