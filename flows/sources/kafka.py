"""Kafka topics as a source: every partition of the input topics, read by one worker each."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from config.settings import KafkaSettings
from engine.admission import InputBounds, WallClockGuard
from flows import collector
from flows.items import Sequenced
from flows.sources.common import SourceItem, decode, refuse
from schemas.outputs import DeadLetter

if TYPE_CHECKING:
    from ops import Telemetry

log = logging.getLogger(__name__)
#: How often (seconds) a Kafka partition updates its consumer-lag metric.
LAG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class KafkaPosition:
    """Resume state of one topic partition: the next offset to read and the next seq."""

    offset: int
    seq: int


def consumer_config(settings: KafkaSettings) -> dict[str, str | int | float | bool]:
    """The engine's consumer settings: latency defaults, ``[kafka.client]`` and
    ``[kafka.consumer]``, fixed semantics."""
    return {
        # Latency: a broker answers a fetch as soon as it has one byte (fetch.min.bytes) and
        # holds one that found nothing for at most fetch.wait.max.ms. Kafka answers the moment
        # data arrives, so this wait costs no latency there; brokers that only look again at
        # the deadline (Tansu) add up to it for the first record after a quiet spell. A short
        # wait is worse there: Tansu answers empty when reading a partition takes longer than
        # the wait, and its read time grows with the log, so the consumer would stall for good.
        # Small requests go out at once (no Nagle).
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 50,
        "socket.nagle.disable": True,
        **settings.consumer_config(),
        # Positions live in Bytewax recovery, not in the group: partitions are assigned (no
        # rebalancing) and only each epoch's end position is committed, for lag tools to see.
        "group.id": "crm-engine",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


class _SharedConsumer:
    """One consumer for every topic partition a worker reads, with a queue per partition.

    A consumer per partition (as Bytewax's own Kafka source has) means a connection, a
    fetch loop and a set of librdkafka threads per partition, all polling the broker; one
    consumer fetches every partition of the worker in one request per round trip.
    ``take`` hands a partition its messages in offset order, each with the wall-clock time
    it was read from the broker, consuming more (never blocking) when it has none queued.
    """

    def __init__(self, config: dict[str, str | int | float | bool], batch_size: int) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(config)
        self._batch = batch_size
        self._queues: dict[tuple[str, int], list[tuple[float, Any]]] = {}
        self.closed = False

    def add(self, topic: str, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        self._queues[(topic, partition)] = []
        self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def remove(self, topic: str, partition: int) -> None:
        """Stop reading ``topic#partition``; close the consumer after the last one."""
        from confluent_kafka import TopicPartition

        if self._queues.pop((topic, partition), None) is None or self.closed:
            return
        if self._queues:
            self._consumer.incremental_unassign([TopicPartition(topic, partition)])
        else:
            self.closed = True
            self._consumer.close()

    def commit(self, topic: str, partition: int, position: int) -> None:
        """Tell the consumer group ``position`` (the next offset to read) for lag tools; the
        engine itself resumes from its recovery snapshot, never from the group."""
        from confluent_kafka import KafkaException, TopicPartition

        if self.closed or position < 0:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(topic, partition, position)], asynchronous=True)
        except KafkaException as exc:  # informational: never the engine's problem
            log.warning("could not commit the position of %s#%d to the consumer group: %s", topic, partition, exc)

    def lag(self, topic: str, partition: int, position: int) -> int | None:
        """Messages after ``position`` (the next offset to read, or the logical start offset),
        from the watermarks last seen in fetches (no request to the broker); None if unknown."""
        from confluent_kafka import OFFSET_END, TopicPartition

        low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if high < 0:
            return None
        if position < 0:  # nothing read yet: from the start of the log, or from its end
            return 0 if position == OFFSET_END else high - max(low, 0)
        return max(0, high - position)

    def take(self, topic: str, partition: int) -> list[tuple[float, Any]]:
        key = (topic, partition)
        if not self._queues[key]:
            self._consume()
        messages = self._queues[key]
        if messages:
            self._queues[key] = []
        return messages

    def _consume(self) -> None:
        messages = self._consumer.consume(self._batch, 0)
        read_at = time.time()
        for msg in messages:
            error = msg.error()
            if error is not None:
                where = f"{msg.topic()}#{msg.partition()}" if msg.topic() else "the broker"
                if error.fatal():
                    raise RuntimeError(f"Kafka consumer for {where} failed: {error}")
                log.warning("kafka consumer error on %s: %s", where, error)
                continue
            queue = self._queues.get((msg.topic() or "", msg.partition() or 0))
            if queue is not None:  # None: a partition removed since the fetch
                queue.append((read_at, msg))


class _KafkaPartition(StatefulSourcePartition[SourceItem, KafkaPosition]):
    def __init__(self, source: KafkaSource, shared: _SharedConsumer, topic: str, partition: int,
                 start: int, resume: KafkaPosition | None, stop: threading.Event, guard: WallClockGuard,
                 telemetry: Telemetry | None = None) -> None:
        self._stop = stop
        self._guard = guard
        self._limit = guard.bounds.dead_letter_max_payload_bytes
        self._telemetry = telemetry
        self._lag_due = 0.0
        self._source, self._shared, self._topic, self._partition = source, shared, topic, partition
        self._part = f"{topic}#{partition}"
        self._offset: int = resume.offset if resume else start
        self._committed = self._offset
        self._seq = resume.seq if resume else 0
        shared.add(topic, partition, self._offset)

    def next_batch(self) -> list[SourceItem]:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

        if self._stop.is_set():
            raise StopIteration
        # Never block: Bytewax polls every partition of this worker in turn, and pauses 1 ms
        # by itself when a round brought nothing.
        batch: list[SourceItem] = []
        for read_at, msg in self._shared.take(self._topic, self._partition):
            offset = msg.offset()
            if offset is None:  # only error events lack an offset
                continue
            raw = msg.value() or b""
            origin = {"topic": self._topic, "partition": self._partition, "offset": offset}
            result = decode(raw, origin, self._limit)
            if isinstance(result, DeadLetter):
                batch.append(result)
            elif (problem := self._guard.problem(result, read_at)) is not None:
                batch.append(refuse(raw, problem, origin, self._limit))
            else:
                kind, stamp = msg.timestamp()
                source_time = stamp / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE else None
                batch.append(Sequenced(self._part, self._seq, result, source_time, read_at))
                self._seq += 1
            self._offset = offset + 1
        if self._telemetry is not None:
            self._report()
        if not batch:
            collector.idle()
        return batch

    def _report(self) -> None:
        """Readiness, and the partition's lag once per ``LAG_INTERVAL_S``."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        telemetry = self._telemetry
        assert telemetry is not None
        telemetry.readiness.source_connected()
        telemetry.metrics.source_polled()
        lag = self._shared.lag(self._topic, self._partition, self._offset)
        if lag is not None:
            telemetry.metrics.consumer_lag(self._topic, self._partition, lag)

    def snapshot(self) -> KafkaPosition:
        """The position at the end of an epoch; also committed to the consumer group (when it
        moved), so that ``kafka-consumer-groups`` and lag exporters see the engine's progress."""
        if self._offset != self._committed:
            self._shared.commit(self._topic, self._partition, self._offset)
            self._committed = self._offset
        return KafkaPosition(self._offset, self._seq)

    def close(self) -> None:
        self._source.release(self._shared, self._topic, self._partition)


class KafkaSource(FixedPartitionedSource[SourceItem, KafkaPosition]):
    """All partitions of the configured input topics; each read by exactly one worker.

    Each worker reads all of its partitions through one consumer (see ``_SharedConsumer``):
    Bytewax builds and polls a worker's partitions on that worker's thread, and the workers
    of a process share this source object, so consumers are kept here by thread.
    """

    def __init__(self, settings: KafkaSettings, topics: Iterable[str] | None = None,
                 stop: threading.Event | None = None, telemetry: Telemetry | None = None,
                 bounds: InputBounds | None = None) -> None:
        self._settings = settings
        self._guard = WallClockGuard(bounds or InputBounds())
        self._stop = stop or threading.Event()
        self._telemetry = telemetry
        # The kinds may share a topic; each topic partition is read once.
        self._topics = tuple(dict.fromkeys(topics or settings.topics()))
        self._lock = threading.Lock()
        self._consumers: dict[int, _SharedConsumer] = {}  # by worker thread

    def list_parts(self) -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._settings.client_config())
        metadata = admin.list_topics(timeout=10)
        parts: list[str] = []
        for topic in self._topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise RuntimeError(
                    f"Kafka topic {topic!r} is not available at {self._settings.bootstrap_servers}: "
                    f"{'missing' if meta is None else meta.error}; create it or set its name in [kafka]")
            parts.extend(f"{topic}#{p}" for p in sorted(meta.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str,
                   resume_state: KafkaPosition | None) -> _KafkaPartition:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        topic, _, partition = for_part.rpartition("#")
        settings = self._settings
        start = OFFSET_BEGINNING if settings.starting_offset == "earliest" else OFFSET_END
        worker = threading.get_ident()
        with self._lock:
            shared = self._consumers.get(worker)
            if shared is None or shared.closed:
                shared = self._consumers[worker] = _SharedConsumer(consumer_config(settings), settings.batch_size)
            return _KafkaPartition(self, shared, topic, int(partition), start, resume_state, self._stop,
                                   self._guard, self._telemetry)

    def release(self, shared: _SharedConsumer, topic: str, partition: int) -> None:
        """A partition is done; the worker's consumer closes with its last partition."""
        with self._lock:
            shared.remove(topic, partition)
            if shared.closed:
                self._consumers = {w: c for w, c in self._consumers.items() if c is not shared}
