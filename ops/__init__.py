"""Operations: Prometheus metrics, health endpoints and structured logs.

``Telemetry`` bundles what one engine process reports (its ``EngineMetrics`` on its own
registry, and its ``Readiness``); ``run.py`` creates it when ``--metrics-port`` is given and
passes it down to the dataflow, the sources and the sinks. Without it nothing is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ops.health import Readiness
from ops.metrics import EngineMetrics, SinkMetrics
from sinks.base import Record, Sink, SinkFactory


@dataclass(frozen=True)
class Telemetry:
    """One process's metrics and readiness."""

    metrics: EngineMetrics
    readiness: Readiness

    def metered(self, name: str, factory: SinkFactory) -> SinkFactory:
        """``factory`` whose sinks count their records and errors as sink ``name`` and hold
        ``/readyz`` until they are open."""
        def build() -> Sink:
            return MeteredSink(factory(), name, self)
        return build


class MeteredSink(Sink):
    """Any sink, with its records and failed writes counted and its opening tracked. A sink
    that does not confirm deliveries itself (``Sink.reports_delivery``: files, the console)
    delivers a record when ``write_batch`` returns: that write's duration is the delivery
    latency of each of its records, and the sink has no buffer (capacity 0)."""

    def __init__(self, sink: Sink, name: str, telemetry: Telemetry) -> None:
        self._sink, self._name, self._readiness = sink, name, telemetry.readiness
        self._metrics = telemetry.metrics.sink(name)
        self._timed = not sink.reports_delivery
        if self._timed:
            self._metrics.buffer_capacity(0)
        sink.attach_metrics(self._metrics)
        self._readiness.sink_opening(name)

    def open(self, resume: Any = None) -> None:
        self._sink.open(resume)
        self._readiness.sink_opened(self._name)

    def write_batch(self, records: list[Record]) -> None:
        started = time.perf_counter()
        try:
            self._sink.write_batch(records)
        except Exception:
            self._metrics.error(len(records))
            raise
        self._metrics.written(len(records))
        if self._timed and records:
            self._metrics.delivered([time.perf_counter() - started] * len(records))

    def position(self) -> Any:
        return self._sink.position()

    def close(self) -> None:
        self._sink.close()


__all__ = ["EngineMetrics", "MeteredSink", "Readiness", "SinkMetrics", "Telemetry"]
