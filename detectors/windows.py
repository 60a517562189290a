"""Event-time sliding windows: counts and sums over several spans with one shared buffer.

``SlidingWindows(spans)`` keeps the values of the longest span once, and for every span a
running count and sum, so ``add`` is O(1) amortised and nothing is recomputed. Time is the
caller's event time in seconds; it never reads the clock, so replay equals live.

>>> w = SlidingWindows((3600.0, 86400.0))
>>> w.add(0.0, 10.0); w.add(1800.0, 5.0); w.add(7200.0, 1.0)
>>> w.count(0), w.total(0), w.count(1), w.total(1)
(1, 1.0, 3, 16.0)
>>> w.advance(7200.0 + 86400.0)   # a day after the last value, every span is empty
>>> w.count(1), len(w)
(0, 0)
>>> w.add(0.0, 1e20); w.add(1.0, 1.0); w.advance(3601.0)   # the sums stay exact
>>> w.total(0), w.total(1)
(0.0, 1e+20)
>>> w.advance(86401.0); w.total(1)
0.0
>>> big = SlidingWindows((10.0, 100.0)); big.add(0.0, 1e20); big.add(20.0, 0.5); big.advance(105.0)
>>> big.total(1)
0.5
"""

from __future__ import annotations

import math
from typing import Any, Final

INF: Final = float("inf")


#: A running sum is recomputed exactly once it has shed this many times its own size: after
#: a large value leaves a window, what remains may be below the rounding error of the sum
#: that held it (1e20 + 1 - 1e20 is 0 in floats), or even negative.
_LOSS: Final = 2.0**20


def _settled(total: float, removed: float, values: list[float], start: int, stop: int) -> float:
    """``total`` (a running sum just reduced by values of magnitude ``removed``), or the exact
    sum of ``values[start:stop]`` when the reduction may have cost it its precision."""
    if total >= 0.0 and removed <= _LOSS * total:
        return total
    return math.fsum(values[start:stop])


class SlidingWindows:
    """Counts and sums of values whose time is within each span of the latest time.

    ``max_items`` bounds memory: past it the oldest values are dropped from every span
    (the longest spans of a very busy key then under-count, by design). ``counts[i]`` and
    ``sums[i]`` are span ``i``'s count and sum (read them, never write them; ``advance``
    first), the same as ``count(i)`` and ``total(i)`` without a call on hot paths. ``due``
    is the earliest event time at which a value expires: ``advance(t)`` with ``t < due``
    does nothing, so a hot path may skip the call.
    """

    __slots__ = ("_base", "_starts", "_times", "_values", "counts", "due", "max_items", "spans", "sums")

    def __init__(self, spans: tuple[float, ...], max_items: int = 2048) -> None:
        if list(spans) != sorted(spans) or not spans:
            raise ValueError(f"spans must be non-empty and ascending, got {spans}")
        self.spans = spans
        self.max_items = max_items
        # Values live in plain lists (O(1) indexing); a dead prefix is cut off in bulk.
        self._times: list[float] = []
        self._values: list[float] = []
        self._base = 0  # absolute index of _times[0]
        self._starts = [0] * len(spans)  # absolute index of each span's oldest value
        self.counts = [0] * len(spans)
        self.sums = [0.0] * len(spans)
        self.due = INF  # the earliest event time at which a value expires from a span

    def add(self, t: float, value: float) -> None:
        """Record ``value`` at event time ``t`` (times must not go backwards by much)."""
        times = self._times
        times.append(t)
        self._values.append(value)
        counts, sums = self.counts, self.sums
        for i in range(len(counts)):
            counts[i] += 1
            sums[i] += value
        # The new value leaves the shortest span first; the other spans' next expiry is earlier.
        expiry = t + self.spans[0]
        if expiry < self.due:
            self.due = expiry
        if t >= self.due:
            self.advance(t)
        if len(times) - (self._starts[-1] - self._base) > self.max_items:
            self._drop_oldest()

    def advance(self, now: float) -> None:
        """Expire values older than each span as of event time ``now``."""
        if now < self.due:
            return  # the common case: nothing expires yet
        times, values, base, starts = self._times, self._values, self._base, self._starts
        counts, sums = self.counts, self.sums
        end = base + len(times)
        due = INF
        for i, span in enumerate(self.spans):
            start, cutoff = starts[i], now - span
            if start < end and times[start - base] <= cutoff:
                count, total, removed = counts[i], sums[i], 0.0
                while start < end and times[start - base] <= cutoff:
                    count -= 1
                    value = values[start - base]
                    total -= value
                    removed += abs(value)
                    start += 1
                starts[i], counts[i] = start, count
                sums[i] = _settled(total, removed, values, start - base, end - base) if count else 0.0
            if start < end:
                expiry = times[start - base] + span
                if expiry < due:
                    due = expiry
        self.due = due
        dead = starts[-1] - base  # the longest span starts last; what is before it is gone
        if dead > 64 and dead * 2 > len(times):
            del times[:dead]
            del values[:dead]
            self._base = starts[-1]

    def _drop_oldest(self) -> None:
        oldest, base, values = self._starts[-1], self._base, self._values
        value = values[oldest - base]
        end = base + len(values)
        for i in range(len(self.spans)):
            if self._starts[i] == oldest:
                self._starts[i] += 1
                self.counts[i] -= 1
                self.sums[i] = _settled(self.sums[i] - value, abs(value), values, oldest + 1 - base, end - base)

    def count(self, i: int) -> int:
        """Number of values in span ``i``."""
        return self.counts[i]

    def total(self, i: int) -> float:
        """Sum of values in span ``i``."""
        return self.sums[i]

    def __len__(self) -> int:
        return self.counts[-1]

    def __getstate__(self) -> tuple[Any, ...]:
        live = self._starts[-1] - self._base  # only the live values are worth keeping
        return (self.spans, self.max_items, self._times[live:], self._values[live:],
                self._starts[-1], self._starts, self.counts, self.sums, self.due)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.spans, self.max_items, self._times, self._values, self._base,
         self._starts, self.counts, self.sums, self.due) = state
