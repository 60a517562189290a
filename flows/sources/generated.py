"""The built-in simulator as a live source."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from config.settings import SimulatorSettings
from engine.admission import InputBounds, WatermarkGuard
from flows.items import Sequenced
from flows.sources.common import SourceItem, refuse
from schemas.events import InvalidEvent, event_from_obj

if TYPE_CHECKING:
    from ops import Telemetry
    from simulator.loop import Loopback


@dataclass(frozen=True)
class SimulatorPosition:
    """Resume state of the simulator: events generated so far, and the next seq."""

    generated: int
    seq: int


class _SimulatorPartition(StatefulSourcePartition[SourceItem, SimulatorPosition]):
    """Generates the simulator's stream, paced to ``rate_per_s`` without blocking; its events
    are admitted against the partition's watermark (``engine.admission.WatermarkGuard``)."""

    def __init__(self, part: str, events: Iterator[dict[str, Any]], start: SimulatorPosition,
                 rate_per_s: float, stop: threading.Event, bounds: InputBounds,
                 telemetry: Telemetry | None = None) -> None:
        self._part, self._events, self._rate, self._stop = part, events, rate_per_s, stop
        self._telemetry = telemetry
        self._guard = WatermarkGuard(bounds)
        self._limit = bounds.dead_letter_max_payload_bytes
        for _ in range(start.generated):  # deterministic: regenerating the stream reaches the same place
            next(self._events, None)
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
            origin = {"simulator": self._next}
            self._next += 1
            try:
                event = event_from_obj(obj)
            except InvalidEvent as exc:  # a simulator bug; still never a crash
                batch.append(refuse(repr(obj).encode(), str(exc), origin, self._limit))
                continue
            problem = self._guard.problem(event)
            if problem is not None:
                batch.append(refuse(orjson.dumps(obj), problem, origin, self._limit))
                continue
            batch.append(Sequenced(self._part, self._seq, event, now))
            self._seq += 1
        return batch

    def next_awake(self) -> datetime | None:
        if self._rate <= 0:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=5)

    def snapshot(self) -> SimulatorPosition:
        return SimulatorPosition(self._next, self._seq)


class SimulatorSource(FixedPartitionedSource[SourceItem, SimulatorPosition]):
    """The built-in simulator as a live source.

    With a ``loopback`` (``simulator.loop``), the simulation it builds answers the prompts
    handed to the loopback: a closed loop. A partition rebuilt from a snapshot regenerates the
    stream up to its position without the answers given before the restart (they are gone
    with the old process), then goes on answering.
    """

    PART = "simulator"

    def __init__(self, settings: SimulatorSettings, stop: threading.Event | None = None,
                 telemetry: Telemetry | None = None, loopback: Loopback | None = None,
                 bounds: InputBounds | None = None) -> None:
        self._settings = settings
        self._bounds = bounds or InputBounds()
        self._stop = stop or threading.Event()
        self._telemetry = telemetry
        self._loopback = loopback

    def list_parts(self) -> list[str]:
        return [self.PART]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: SimulatorPosition | None) -> _SimulatorPartition:
        from simulator import Simulation, SimulatorConfig, generate

        s = self._settings
        config = SimulatorConfig(customers=s.customers, days=s.days, seed=s.seed, fraud_rate=s.fraud_rate)
        events: Iterator[dict[str, Any]]
        if self._loopback is None:
            events = generate(config)
        else:
            simulation = Simulation(config, with_truth=False, responder=self._loopback.responder)
            self._loopback.attach(simulation)
            events = (event for event, _ in simulation.run())
        return _SimulatorPartition(for_part, events, resume_state or SimulatorPosition(0, 0), s.rate_per_s,
                                   self._stop, self._bounds, self._telemetry)
