"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[int], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Median wall time of ``fn(r)`` over ``repeats`` calls (``r`` = repeat index, e.g. for
    seeds), synchronising the device around each call, and the first call's result."""
    times, first = [], None
    for r in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn(r)
        sync()
        times.append(time.perf_counter() - t0)
        if first is None:
            first = out
    return statistics.median(times), first
