"""The engine's sinks (``sinks.base.Sink``) as Bytewax outputs.

``as_output(factory)`` adapts a sink factory for ``op.output``: one writer per worker
(``DynamicSink``) for transports that take concurrent writers, such as Kafka;
``as_single_writer(factory)`` routes every record to one partition, for files and the
console, and keeps the sink's resume position (``Sink.position()``) in Bytewax recovery.
"""

from __future__ import annotations

from typing import Any

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from sinks.base import Record, Sink, SinkFactory


class _Stateless(StatelessSinkPartition[Record]):
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        sink.open()

    def write_batch(self, items: list[Record]) -> None:
        self._sink.write_batch(items)

    def close(self) -> None:
        self._sink.close()


class _PerWorker(DynamicSink[Record]):
    def __init__(self, factory: SinkFactory) -> None:
        self._factory = factory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Stateless:
        return _Stateless(self._factory())


class _Stateful(StatefulSinkPartition[Record, Any]):
    def __init__(self, sink: Sink, resume: Any) -> None:
        self._sink = sink
        sink.open(resume)

    def write_batch(self, values: list[Record]) -> None:
        self._sink.write_batch(values)

    def snapshot(self) -> Any:
        return self._sink.position()

    def close(self) -> None:
        self._sink.close()


class _SingleWriter(FixedPartitionedSink[Record, Any]):
    def __init__(self, factory: SinkFactory) -> None:
        self._factory = factory

    def list_parts(self) -> list[str]:
        return ["single"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Stateful:
        return _Stateful(self._factory(), resume_state)


def as_output(factory: SinkFactory) -> DynamicSink[Record]:
    """A Bytewax sink with one ``factory()`` sink per worker."""
    return _PerWorker(factory)


def as_single_writer(factory: SinkFactory) -> FixedPartitionedSink[Record, Any]:
    """A Bytewax sink with a single ``factory()`` sink; feed it ``(key, record)`` pairs."""
    return _SingleWriter(factory)
