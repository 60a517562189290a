"""A generated stream as a live source: any deterministic, restartable iterator of events.

``GeneratedSource`` takes ``events_from``, a factory ``(start) -> Iterator[dict]`` of the
stream's events (objects of the contract, not yet validated) from the ``start``-th on; the
stream must be the same every time, so that a partition rebuilt from a snapshot carries on
from its position. The source paces the stream to ``rate_per_s`` without blocking and admits
its events against the partition's watermark (``engine.admission.WatermarkGuard``).

The built-in simulator mode hands it the simulator's stream (``simulator.loop.
restartable_stream``, built by ``run.py``): the dataflow knows nothing of the simulator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine.admission import InputBounds, WatermarkGuard
from flows import collector
from flows.items import Sequenced
from flows.sources.common import SourceItem, refuse
from schemas.events import InvalidEvent, event_from_obj

if TYPE_CHECKING:
    from ops import Telemetry

#: The stream from its ``start``-th event on (``start`` events already generated).
EventsFrom = Callable[[int], Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class GeneratedPosition:
    """Resume state of a generated stream: events generated so far, and the next seq."""

    generated: int
    seq: int


class _GeneratedPartition(StatefulSourcePartition[SourceItem, GeneratedPosition]):
    """Takes the stream's events, paced to ``rate_per_s`` without blocking; its events are
    admitted against the partition's watermark (``engine.admission.WatermarkGuard``)."""

    def __init__(self, part: str, events: Iterator[dict[str, Any]], start: GeneratedPosition,
                 rate_per_s: float, stop: threading.Event, bounds: InputBounds,
                 telemetry: Telemetry | None = None) -> None:
        self._part, self._events, self._rate, self._stop = part, events, rate_per_s, stop
        self._telemetry = telemetry
        self._poll_due = 0.0  # when it next tells the metrics it polled
        self._guard = WatermarkGuard(bounds)
        self._limit = bounds.dead_letter_max_payload_bytes
        self._next = self._emitted_at_start = start.generated
        self._seq = start.seq
        self._started = time.monotonic()

    def _allowed(self) -> int:
        if self._rate <= 0:
            return 1000
        due = self._emitted_at_start + int((time.monotonic() - self._started) * self._rate)
        return max(0, min(1000, due - self._next))

    def next_batch(self) -> list[SourceItem]:
        if self._stop.is_set():
            raise StopIteration
        if self._telemetry is not None:
            self._telemetry.readiness.source_connected()
            if time.monotonic() >= self._poll_due:
                self._poll_due = time.monotonic() + 1.0
                self._telemetry.metrics.source_polled()
        batch: list[SourceItem] = []
        now = time.time()  # when the events entered the pipeline (latency metrics)
        for _ in range(self._allowed()):
            obj = next(self._events, None)
            if obj is None:
                if not batch:
                    if self._telemetry is not None:
                        self._telemetry.readiness.source_finished()
                    raise StopIteration
                break
            origin = {self._part: self._next}
            self._next += 1
            try:
                event = event_from_obj(obj)
            except InvalidEvent as exc:  # a generator bug; still never a crash
                batch.append(refuse(repr(obj).encode(), str(exc), origin, self._limit))
                continue
            problem = self._guard.problem(event)
            if problem is not None:
                batch.append(refuse(orjson.dumps(obj), problem, origin, self._limit))
                continue
            batch.append(Sequenced(self._part, self._seq, event, now))
            self._seq += 1
        if not batch:
            collector.idle()
        return batch

    def next_awake(self) -> datetime | None:
        if self._rate <= 0:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=5)

    def snapshot(self) -> GeneratedPosition:
        return GeneratedPosition(self._next, self._seq)


class GeneratedSource(FixedPartitionedSource[SourceItem, GeneratedPosition]):
    """One partition, ``name`` (the source label of its events and the origin of its dead
    letters), reading ``events_from(position)`` at ``rate_per_s`` (0: as fast as it goes)
    until the stream ends or ``stop`` is set."""

    def __init__(self, name: str, events_from: EventsFrom, rate_per_s: float = 0.0,
                 stop: threading.Event | None = None, telemetry: Telemetry | None = None,
                 bounds: InputBounds | None = None) -> None:
        self._name, self._events_from, self._rate = name, events_from, rate_per_s
        self._bounds = bounds or InputBounds()
        self._stop = stop or threading.Event()
        self._telemetry = telemetry

    def list_parts(self) -> list[str]:
        return [self._name]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: GeneratedPosition | None) -> _GeneratedPartition:
        start = resume_state or GeneratedPosition(0, 0)
        return _GeneratedPartition(for_part, self._events_from(start.generated), start, self._rate,
                                   self._stop, self._bounds, self._telemetry)
