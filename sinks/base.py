"""The one small sink interface, and the protocol sinks report through.

A ``Sink`` receives batches of output records (anything with ``to_bytes()``). It creates
its clients in ``open()``, never at import or construction, and states its delivery
guarantee in its docstring. Writes are idempotent by record id downstream (delivery is
at-least-once wherever the transport cannot do better).

A sink reports what happens to its records (written, failed, retried, buffered, lost, and
how long each took from being handed to it to its confirmed delivery) through a
``SinkReport``, a protocol it owns: whoever measures (``ops.metrics.SinkMetrics``)
implements it, and ``Unreported`` is the one that reports nowhere.

Sinks know nothing of the runtime that drives them: ``flows.outputs`` adapts a sink factory
to the dataflow's outputs.

>>> report: SinkReport = Unreported()
>>> report.written(3); report.error(); report.buffer_depth(0); report.delivered([0.002, 0.004])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol


class Record(Protocol):
    """An output record: alert, score, customer state, dead letter."""

    def to_bytes(self) -> bytes: ...


class SinkReport(Protocol):
    """What a sink reports: records written, errors, retries, records buffered and records lost."""

    def written(self, n: int) -> None:
        """``n`` records handed to the sink's transport."""

    def error(self, n: int = 1) -> None:
        """Records that could not be delivered (or a failed write)."""

    def retry(self, n: int = 1) -> None:
        """A write attempted again (back-pressure, a transient error)."""

    def buffer_depth(self, n: int) -> None:
        """Records accepted by the sink and not yet delivered."""

    def buffer_capacity(self, n: int) -> None:
        """The most records the sink holds undelivered before it refuses (dead-letters) or
        waits; 0 for a sink that delivers before ``write_batch`` returns."""

    def delivered(self, latencies_s: list[float]) -> None:
        """Records confirmed delivered, each with the seconds from being handed to the sink
        (``write_batch``) to its confirmation (a write returned, an acknowledgement). Called
        once per batch of confirmations, never per record."""

    def lost(self, n: int = 1) -> None:
        """Records neither delivered nor stored in the sink's dead letters."""


class Unreported:
    """A ``SinkReport`` that reports nowhere: the report of a sink built without metrics."""

    def written(self, n: int) -> None:
        pass

    def error(self, n: int = 1) -> None:
        pass

    def retry(self, n: int = 1) -> None:
        pass

    def buffer_depth(self, n: int) -> None:
        pass

    def buffer_capacity(self, n: int) -> None:
        pass

    def delivered(self, latencies_s: list[float]) -> None:
        pass

    def lost(self, n: int = 1) -> None:
        pass


class Sink(ABC):
    """Where output records go.

    ``reports_delivery``: the sink confirms deliveries to its ``SinkReport`` itself (it
    delivers in the background); otherwise a record counts as delivered when ``write_batch``
    returns, and whoever meters the sink times that (``ops.MeteredSink``).
    """

    reports_delivery = False

    def open(self, resume: Any = None) -> None:  # noqa: B027 (optional hook)
        """Create clients / open files; ``resume`` is the last ``position()`` after a restart."""

    @abstractmethod
    def write_batch(self, records: list[Record]) -> None:
        """Deliver (or hand to an asynchronous client) every record, in order."""

    def position(self) -> Any:
        """What ``open`` needs to resume without duplicates; ``None`` if not resumable."""
        return None

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Deliver what is buffered and release clients."""

    def attach_metrics(self, metrics: SinkReport) -> None:  # noqa: B027 (optional hook)
        """Report retries, failures, buffer depth and capacity, and delivery latencies to
        ``metrics``; a sink that delivers in the background implements it (``sinks.delivery``)."""


SinkFactory = Callable[[], Sink]
