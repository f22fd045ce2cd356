"""A method's peak memory: the resident set size above its value at the method's start,
sampled every 10 ms from ``/proc/self/statm`` (it sees torch's and numpy's allocations alike; a
method that reuses freed memory reads near 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading


def _release_free_memory() -> None:
    """Hand memory freed by earlier methods back to the system (glibc ``malloc_trim``), so that
    the next method's peak is measured from a low start, not inside the earlier heap."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak resident set size above the start, sampled every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def __enter__(self) -> PeakRSS:
        _release_free_memory()
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20
