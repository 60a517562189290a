"""Admission: the configured bounds a valid event must also respect before the engine uses it.

An event can be valid by type (``schemas.events``) and still hostile: an amount that no
window sum can hold exactly, or a timestamp in the year 9999 that would drag every
event-time clock (window expiry, label horizons, churn recency) past the rest of the stream.
``InputBounds`` says what is accepted; an event outside them is dead-lettered with the
reason, as malformed input is, and never reaches a detector.

- **Values** (``value_problem``): ``amount`` at most ``max_amount``; ``balance_after``
  within ``max_amount`` either way; the event time within ``[earliest_ts, latest_ts)``.
- **Event time against a clock** (``max_future_skew_s``): no single event may move a clock
  by more than the skew.

  - Live (Kafka, Redis streams): the clock is the wall clock (``WallClockGuard``). An
    event stamped more than the skew ahead of now is refused.
  - A generated stream (the simulator): the clock is the partition's watermark, the
    latest event time admitted (``WatermarkGuard``).
  - A recording (``admit_recording``, replay): the partition's watermark too, in the
    event-time order a replay processes it in, with one refinement that only a whole
    recording allows: only a pause out of all proportion with the stream's own rhythm
    counts, so a sparse recording (a dormant customer's next event, months later) keeps its
    long gaps, and a busy one followed by a few events years ahead loses those.

Nothing here reads the wall clock by itself: the live guard is given ``now``, so a replay
never depends on when it runs.

>>> bounds = InputBounds(max_amount=1e6, max_future_skew_s=3600.0)
>>> from schemas.events import parse_event
>>> def txn(ts, amount=10.0):
...     return parse_event(f'{{"kind":"transaction","event_id":"e","customer_id":"c","ts":"{ts}",'
...                        f'"amount":{amount}}}'.encode())
>>> value_problem(txn("2026-01-01T00:00:00Z", 2e6), bounds)
"field 'amount': 2e+06 is above the configured max_amount 1e+06"
>>> stream = [txn(f"2026-01-01T00:{minute:02}:00Z") for minute in range(30)]
>>> forged = stream[:2] + [txn("2031-01-01T00:00:00Z")] + stream[2:]
>>> problems, order = admit_recording(forged, bounds)
>>> problems[2] is not None, sum(p is not None for p in problems), order[:4]
(True, 1, [0, 1, 3, 4])
>>> sparse = [txn(f"202{year}-01-01T00:00:00Z") for year in range(6)]   # a year apart, every time
>>> admit_recording(sparse, bounds)[0]
[None, None, None, None, None, None]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from schemas.events import Event, Transaction, parse_timestamp
from schemas.outputs import DEAD_LETTER_MAX_PAYLOAD, format_ts

#: A recording's tail (the events after its last pause longer than the skew) is refused as
#: forged when it has at most TAIL_MAX events, at least BODY_MIN came before the pause, and the
#: pause is RELATIVE times the mean gap between the last BODY events before it.
TAIL_MAX: Final = 100
BODY_MIN: Final = 20
BODY: Final = 100
RELATIVE: Final = 1000.0


@dataclass(frozen=True, slots=True)
class InputBounds:
    """What a valid event must also respect to be processed (``[input]`` in the settings)."""

    max_amount: float = 1e15  # larger than any real payment in any currency, exact in a window sum
    max_future_skew_s: float = 86_400.0  # 0 disables the event-time guard
    earliest_ts: str = "1970-01-01T00:00:00Z"
    latest_ts: str = "2100-01-01T00:00:00Z"
    # A dead letter keeps the whole payload up to this many bytes, beyond it a prefix of this
    # many (with the whole payload's size and SHA-256); 0 keeps only the size and the hash.
    dead_letter_max_payload_bytes: int = DEAD_LETTER_MAX_PAYLOAD

    def __post_init__(self) -> None:
        if self.dead_letter_max_payload_bytes < 0:
            raise ValueError("dead_letter_max_payload_bytes must be 0 or more, "
                             f"got {self.dead_letter_max_payload_bytes}")
        if not 0 < self.max_amount < 1e300:
            raise ValueError(f"max_amount must be positive and finite, got {self.max_amount}")
        if self.max_future_skew_s < 0:
            raise ValueError(f"max_future_skew_s must be 0 (off) or more, got {self.max_future_skew_s}")
        for name in ("earliest_ts", "latest_ts"):
            try:
                parse_timestamp(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name}: not an RFC 3339 timestamp: {getattr(self, name)!r}") from None
        if parse_timestamp(self.earliest_ts) >= parse_timestamp(self.latest_ts):
            raise ValueError(f"earliest_ts {self.earliest_ts} must be before latest_ts {self.latest_ts}")

    def time_range(self) -> tuple[float, float]:
        """``[earliest, latest)`` in seconds since the epoch."""
        return parse_timestamp(self.earliest_ts), parse_timestamp(self.latest_ts)


def value_problem(event: Event, bounds: InputBounds, time_range: tuple[float, float] | None = None) -> str | None:
    """Why ``event``'s values are outside ``bounds``, or None if they are within."""
    earliest, latest = time_range or bounds.time_range()
    if not earliest <= event.t < latest:
        return (f"field 'ts': {event.ts[:40]!r} is outside the configured range "
                f"[{bounds.earliest_ts}, {bounds.latest_ts})")
    if isinstance(event, Transaction):
        limit = bounds.max_amount
        if event.amount > limit:
            return f"field 'amount': {event.amount:g} is above the configured max_amount {limit:g}"
        balance = event.balance_after
        if balance is not None and not -limit <= balance <= limit:
            return f"field 'balance_after': {balance:g} is beyond the configured max_amount {limit:g}"
    return None


def _ahead(event: Event, clock: float, name: str, bounds: InputBounds) -> str:
    return (f"field 'ts': {event.ts[:40]!r} is {event.t - clock:,.0f} s ahead of the {name} "
            f"({format_ts(clock)}); max_future_skew_s is {bounds.max_future_skew_s:g}")


class WallClockGuard:
    """Live sources: values within bounds, and no event more than the skew ahead of now."""

    __slots__ = ("_range", "bounds")

    def __init__(self, bounds: InputBounds) -> None:
        self.bounds = bounds
        self._range = bounds.time_range()

    def problem(self, event: Event, now: float) -> str | None:
        """Why ``event`` is refused at wall-clock time ``now``, or None."""
        problem = value_problem(event, self.bounds, self._range)
        if problem is not None:
            return problem
        skew = self.bounds.max_future_skew_s
        if skew and event.t > now + skew:
            return _ahead(event, now, "wall clock", self.bounds)
        return None


class WatermarkGuard:
    """A generated stream's partition: values within bounds, and no event more than the skew
    ahead of the latest event time admitted so far (the partition's watermark)."""

    __slots__ = ("_range", "bounds", "watermark")

    def __init__(self, bounds: InputBounds, watermark: float | None = None) -> None:
        self.bounds = bounds
        self._range = bounds.time_range()
        self.watermark = watermark

    def problem(self, event: Event) -> str | None:
        """Why ``event`` is refused, or None (then it is admitted and may move the watermark)."""
        problem = value_problem(event, self.bounds, self._range)
        if problem is not None:
            return problem
        skew, mark = self.bounds.max_future_skew_s, self.watermark
        if mark is not None and skew and event.t > mark + skew:
            return _ahead(event, mark, "partition's watermark", self.bounds)
        if mark is None or event.t > mark:
            self.watermark = event.t
        return None


def admit_recording(events: Sequence[Event], bounds: InputBounds) -> tuple[list[str | None], list[int]]:
    """For a recording's valid events: why each is refused (or None), and the indices of the
    admitted ones in the order a replay processes them (event time; ties in file order).

    A replay processes its events in event-time order, so there a forged future timestamp
    comes last: it cannot blind the detection of the events before it, but it would become
    the watermark the final customer states are taken at. Its partition's watermark, in that
    order, is the time of the event before it. The events after the last pause of more than
    ``max_future_skew_s`` in the sorted times (the tail) are refused when the pause is out of
    all proportion with the stream before it: a stream with a rhythm (at least ``BODY_MIN``
    events before the pause) that goes quiet for ``RELATIVE`` times its usual gap (over its
    last ``BODY`` events), after which at most ``TAIL_MAX`` events follow. A recording that
    merely has long gaps (a dormant customer's next event, months on, in a small file) keeps
    its events. The test repeats on what remains, and does not depend on the order of the
    lines in the file.
    """
    time_range = bounds.time_range()
    problems = [value_problem(event, bounds, time_range) for event in events]
    candidates = np.array([i for i, problem in enumerate(problems) if problem is None], dtype=np.intp)
    times = np.fromiter((events[i].t for i in candidates), float, count=len(candidates))
    by_time = np.argsort(times, kind="stable")
    order, times = candidates[by_time], times[by_time]
    skew, keep = bounds.max_future_skew_s, len(order)
    while skew and keep > BODY_MIN:
        pauses = np.flatnonzero(np.diff(times[:keep]) > skew)
        if not len(pauses):
            break
        cut = int(pauses[-1]) + 1  # the tail starts here
        body = times[max(0, cut - BODY):cut]
        pause, usual = times[cut] - times[cut - 1], (body[-1] - body[0]) / max(1, len(body) - 1)
        if keep - cut > TAIL_MAX or cut < BODY_MIN or pause <= RELATIVE * usual:
            break
        mark = float(times[cut - 1])
        for index in order[cut:keep].tolist():
            problems[index] = _ahead(events[index], mark, "partition's watermark", bounds)
        keep = cut
    return problems, order[:keep].tolist()
