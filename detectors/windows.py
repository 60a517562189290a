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
"""

from __future__ import annotations

from collections import deque


class SlidingWindows:
    """Counts and sums of values whose time is within each span of the latest time.

    ``max_items`` bounds memory: past it the oldest values are dropped from every span
    (the longest spans of a very busy key then under-count, by design).
    """

    __slots__ = ("spans", "max_items", "_times", "_values", "_base", "_starts", "_counts", "_sums")

    def __init__(self, spans: tuple[float, ...], max_items: int = 2048) -> None:
        if list(spans) != sorted(spans) or not spans:
            raise ValueError(f"spans must be non-empty and ascending, got {spans}")
        self.spans = spans
        self.max_items = max_items
        self._times: deque[float] = deque()
        self._values: deque[float] = deque()
        self._base = 0  # absolute index of _times[0]
        self._starts = [0] * len(spans)  # absolute index of each span's oldest value
        self._counts = [0] * len(spans)
        self._sums = [0.0] * len(spans)

    def add(self, t: float, value: float) -> None:
        """Record ``value`` at event time ``t`` (times must not go backwards by much)."""
        self._times.append(t)
        self._values.append(value)
        for i in range(len(self.spans)):
            self._counts[i] += 1
            self._sums[i] += value
        self.advance(t)
        if len(self._times) > self.max_items:
            self._drop_oldest()

    def advance(self, now: float) -> None:
        """Expire values older than each span as of event time ``now``."""
        times, values, base = self._times, self._values, self._base
        for i, span in enumerate(self.spans):
            start, cutoff = self._starts[i], now - span
            while start - base < len(times) and times[start - base] <= cutoff:
                self._counts[i] -= 1
                self._sums[i] -= values[start - base]
                start += 1
            self._starts[i] = start
        # The longest span starts last: everything before it is no longer needed.
        while self._base < self._starts[-1]:
            times.popleft()
            values.popleft()
            self._base += 1
        if not times:  # keep float drift from accumulating across quiet periods
            self._sums = [0.0] * len(self.spans)

    def _drop_oldest(self) -> None:
        value = self._values.popleft()
        self._times.popleft()
        for i in range(len(self.spans)):
            if self._starts[i] == self._base:
                self._starts[i] += 1
                self._counts[i] -= 1
                self._sums[i] -= value
        self._base += 1

    def count(self, i: int) -> int:
        """Number of values in span ``i``."""
        return self._counts[i]

    def total(self, i: int) -> float:
        """Sum of values in span ``i``."""
        return self._sums[i]

    def __len__(self) -> int:
        return len(self._times)

    def __getstate__(self) -> tuple[object, ...]:
        return (self.spans, self.max_items, list(self._times), list(self._values), self._base,
                self._starts, self._counts, self._sums)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        (self.spans, self.max_items, times, values, self._base,  # type: ignore[assignment]
         self._starts, self._counts, self._sums) = state  # type: ignore[assignment]
        self._times = deque(times)  # type: ignore[call-overload]
        self._values = deque(values)  # type: ignore[call-overload]
