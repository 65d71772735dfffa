"""Progress lines for long work, readable in a CI log (no carriage-return bars)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints `stage: done/total (pct) rate unit/s ETA` at most every `every_s` seconds.

    >>> p = Progress("extract", total=1000, unit="img")
    >>> p.update(64)   # after each batch
    >>> p.close()      # prints the final line
    """

    def __init__(self, stage: str, total: int | None, unit: str = "items", every_s: float = 5.0,
                 stream=None) -> None:
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done / dt if dt > 0 else 0.0

    def _print(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            msg = (f"{self.stage}: {self.done}/{self.total} ({pct:.1f}%) "
                   f"{rate:,.0f} {self.unit}/s ETA {eta:,.0f}s")
        else:
            msg = f"{self.stage}: {self.done} {self.unit} {rate:,.0f} {self.unit}/s"
        print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        self._print(time.perf_counter())
