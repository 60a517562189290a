"""Step timers: a keyed step's logic with the time it spends on each batch observed.

The histogram it observes into is ``ops.metrics`` (``EngineMetrics.step_timer(step)``):
``flows.dataflow.build_flow`` wraps each keyed step's logic in a ``TimedLogic`` only when it
is given metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from time import perf_counter
from typing import TYPE_CHECKING, Generic, TypeVar

from bytewax.operators import StatefulBatchLogic

if TYPE_CHECKING:
    from ops.metrics import HistogramChild

X = TypeVar("X")
Y = TypeVar("Y")
S = TypeVar("S")


class TimedLogic(StatefulBatchLogic[X, Y, S], Generic[X, Y, S]):
    """A step's logic, unchanged, with the time of each ``on_batch`` observed.

    Bytewax builds a key's logic on the worker thread that owns the key and calls it only
    there, so the timer adds to that thread's tally directly (no lock, no lookup).
    """

    def __init__(self, logic: StatefulBatchLogic[X, Y, S], timer: HistogramChild) -> None:
        self.logic = logic
        self._tally = timer.tally()
        self._bounds = timer.bounds

    def on_batch(self, values: list[X]) -> tuple[Iterable[Y], bool]:
        start = perf_counter()
        out = self.logic.on_batch(values)
        elapsed = perf_counter() - start
        tally = self._tally
        tally.counts[bisect_left(self._bounds, elapsed)] += 1
        tally.sum += elapsed
        tally.items += len(values)
        return out

    def on_notify(self) -> tuple[Iterable[Y], bool]:
        return self.logic.on_notify()

    def on_eof(self) -> tuple[Iterable[Y], bool]:
        return self.logic.on_eof()

    def notify_at(self) -> datetime | None:
        return self.logic.notify_at()

    def snapshot(self) -> S:
        return self.logic.snapshot()
