"""Timing one call at a time on the calling thread, and summarising samples.

Every sample is ``perf_counter_ns()`` read just before and just after a single
call. The timer's own cost is measured the same way (two reads with nothing in
between) and reported as a row; nothing is subtracted from any sample.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Summary:
    """Distribution of one row's samples, in nanoseconds."""

    n: int
    p50_ns: int
    p99_ns: int
    p999_ns: int
    max_ns: int
    mean_ns: float
    over_1ms: int  # samples above 1 ms

    def ratio_to(self, other: "Summary") -> float:
        """How many times this row's p50 is over ``other``'s."""
        return self.p50_ns / other.p50_ns if other.p50_ns else math.inf


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[int]) -> Optional[Summary]:
    if not samples:
        return None
    ordered = sorted(samples)
    return Summary(
        n=len(ordered),
        p50_ns=percentile(ordered, 0.50),
        p99_ns=percentile(ordered, 0.99),
        p999_ns=percentile(ordered, 0.999),
        max_ns=ordered[-1],
        mean_ns=sum(ordered) / len(ordered),
        over_1ms=len(ordered) - bisect.bisect_right(ordered, 1_000_000),
    )


def sample_timer(count: int, out: List[int]) -> None:
    """The timer's own overhead: two reads with nothing in between."""
    pc = time.perf_counter_ns
    append = out.append
    for _ in range(count):
        t0 = pc()
        t1 = pc()
        append(t1 - t0)


def sample_calls(
    fn: Callable[..., Any], args: Tuple[Any, ...], count: int, out: List[int], deadline_ns: int = 0
) -> None:
    """Time ``fn(*args)`` ``count`` times, or until ``deadline_ns`` passes.

    The call is spelled with its positional arguments (no ``*args`` unpacking
    inside the timed region), so every row pays only for its own call.
    """
    pc = time.perf_counter_ns
    append = out.append
    n = len(args)
    if n == 0:
        for _ in range(count):
            t0 = pc()
            fn()
            t1 = pc()
            append(t1 - t0)
            if deadline_ns and t1 > deadline_ns:
                break
    elif n == 2:
        a, b = args
        for _ in range(count):
            t0 = pc()
            fn(a, b)
            t1 = pc()
            append(t1 - t0)
            if deadline_ns and t1 > deadline_ns:
                break
    elif n == 3:
        a, b, c = args
        for _ in range(count):
            t0 = pc()
            fn(a, b, c)
            t1 = pc()
            append(t1 - t0)
            if deadline_ns and t1 > deadline_ns:
                break
    elif n == 4:
        a, b, c, d = args
        for _ in range(count):
            t0 = pc()
            fn(a, b, c, d)
            t1 = pc()
            append(t1 - t0)
            if deadline_ns and t1 > deadline_ns:
                break
    elif n == 7:
        a, b, c, d, e, f, g = args
        for _ in range(count):
            t0 = pc()
            fn(a, b, c, d, e, f, g)
            t1 = pc()
            append(t1 - t0)
            if deadline_ns and t1 > deadline_ns:
                break
    else:
        raise ValueError(f"sample_calls: no timing loop for {n} arguments; add one")


def fmt_ns(ns: Optional[float]) -> str:
    """A duration for the table: ns below 1 us, us below 1 ms, then ms or s."""
    if ns is None:
        return "-"
    size = abs(ns)
    if size < 1_000:
        return f"{ns:.0f} ns"
    if size < 1_000_000:
        return f"{ns / 1e3:.2f} us"
    if size < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"
