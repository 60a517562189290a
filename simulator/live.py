"""Replay a stream at a bounded rate, for live demos.

``paced(events, rate_per_s)`` yields the same items no faster than ``rate_per_s`` on average.
It keeps a schedule (item ``n`` is due ``n / rate_per_s`` seconds after the start) and sleeps
only once it is more than 5 ms ahead of it, so a fast producer costs one sleep per few ms of
events, not one per event. A consumer that falls far behind does not get an unbounded burst
afterwards: the schedule restarts when it is more than ``max_lag_s`` late. Event times are
left as simulated; only the wall-clock pace changes.

>>> clock = [0.0]
>>> out = list(paced(range(5), 2.0, sleep=lambda s: clock.__setitem__(0, clock[0] + s),
...                  monotonic=lambda: clock[0]))
>>> out, clock[0]
([0, 1, 2, 3, 4], 2.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

T = TypeVar("T")

#: Sleep only when at least this far ahead of schedule (seconds).
MIN_SLEEP_S: Final = 0.005


def paced(events: Iterable[T], rate_per_s: float, sleep: Callable[[float], object] = time.sleep,
          monotonic: Callable[[], float] = time.monotonic, max_lag_s: float = 1.0) -> Iterator[T]:
    """Yield ``events`` unchanged, at most ``rate_per_s`` per second on average.

    ``rate_per_s`` may be ``math.inf`` (no pacing). ``sleep`` and ``monotonic`` are injectable
    so tests can run on a fake clock.
    """
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if math.isinf(rate_per_s):
        yield from events
        return
    interval = 1.0 / rate_per_s
    origin = monotonic()
    sent = 0
    for event in events:
        due = origin + sent * interval
        now = monotonic()
        if due - now > MIN_SLEEP_S:
            sleep(due - now)
        elif now - due > max_lag_s:
            origin, sent = now, 0  # far behind: start a new schedule rather than burst
        yield event
        sent += 1
