"""Bytewax sources: a recorded JSONL file, the built-in simulator and Kafka topics.

Every source decodes and validates in the partition that reads the message, and emits
either a ``Sequenced`` event or a ``DeadLetter`` carrying the raw payload, its origin and
the reason. Each source is a ``FixedPartitionedSource`` whose resume state is its position
(line, event count or offset) together with the partition's event sequence number, so a
run with recovery resumes exactly where its last snapshot was taken.

The live sources take a ``threading.Event``: once it is set (on SIGINT or SIGTERM, see
``run.py``) they end their partitions, so the dataflow drains what is in flight, sinks
flush and close, and the process exits normally.

Given a ``Telemetry`` (``ops``), the live sources report readiness (connected once their
partitions are built and polled) and the Kafka source the consumer lag of each partition.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from config.settings import KafkaSettings, SimulatorSettings
from engine.admission import InputBounds, WallClockGuard, WatermarkGuard, admit_recording
from flows.items import Sequenced
from schemas.events import Event, InvalidEvent, event_from_obj, parse_event
from schemas.outputs import DEAD_LETTER_MAX_PAYLOAD, DeadLetter

if TYPE_CHECKING:
    from ops import Telemetry
    from simulator.loop import Loopback

log = logging.getLogger(__name__)
#: How often (seconds) a Kafka partition updates its consumer-lag metric.
LAG_INTERVAL_S = 1.0

SourceItem = Sequenced | DeadLetter


def decode(raw: bytes, origin: dict[str, Any], max_payload_bytes: int = DEAD_LETTER_MAX_PAYLOAD) -> Event | DeadLetter:
    """The event in ``raw``, or a dead letter (keeping at most ``max_payload_bytes`` of it)
    saying why there is none."""
    try:
        return parse_event(raw)
    except InvalidEvent as exc:
        return refuse(raw, str(exc), origin, max_payload_bytes)
    except Exception as exc:  # a parser bug is still this message's problem, never the engine's
        log.exception("could not parse a message from %s", origin, extra={"step": "events_in"})
        return refuse(raw, f"could not be parsed: {type(exc).__name__}: {exc}", origin, max_payload_bytes)


def refuse(raw: bytes, reason: str, origin: dict[str, Any],
           max_payload_bytes: int = DEAD_LETTER_MAX_PAYLOAD) -> DeadLetter:
    """The dead letter of a message that is not processed."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("dead letter from %s: %s", origin, reason, extra={"step": "events_in", "reason": reason})
    return DeadLetter.of(raw, reason, origin, max_payload_bytes)


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered (from 1) non-blank lines of a JSONL file, gzip-compressed if it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


# -- replay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayInput:
    """A recorded stream, validated and in event-time order, with its watermark."""

    events: list[Event]
    dead_letters: list[DeadLetter]
    watermark: float | None  # event time of the last event in the whole stream


def load_replay(path: Path, bounds: InputBounds | None = None) -> ReplayInput:
    """Read and validate ``path``, admit its valid events within ``bounds``
    (``engine.admission.admit_recording``), and order them by event time (ties keep file
    order). Dead letters come in file order."""
    bounds = bounds or InputBounds()
    limit = bounds.dead_letter_max_payload_bytes
    numbers: list[int] = []
    valid: list[Event] = []
    dead: list[tuple[int, DeadLetter]] = []
    name = str(path)
    for number, raw in read_lines(path):
        result = decode(raw, {"file": name, "line": number}, limit)
        if isinstance(result, DeadLetter):
            dead.append((number, result))
        else:
            numbers.append(number)
            valid.append(result)
    problems, order = admit_recording(valid, bounds)
    refused = {numbers[i]: problem for i, problem in enumerate(problems) if problem is not None}
    if refused:  # few, if any: their payloads are read again, as received
        dead.extend((number, refuse(raw, refused[number], {"file": name, "line": number}, limit))
                    for number, raw in read_lines(path) if number in refused)
        dead.sort(key=lambda item: item[0])
    events = [valid[i] for i in order]
    return ReplayInput(events, [d for _, d in dead], events[-1].t if events else None)


class _ListPartition(StatefulSourcePartition[SourceItem, int]):
    """``items`` in batches; no batch spans ``boundary`` (so the events' batches are the same
    whatever the number of dead letters before them, and so is the order of the outputs)."""

    def __init__(self, items: list[SourceItem], start: int, batch_size: int, boundary: int = 0) -> None:
        self._items, self._next, self._batch, self._boundary = items, start, batch_size, boundary

    def next_batch(self) -> list[SourceItem]:
        if self._next >= len(self._items):
            raise StopIteration
        end = self._next + self._batch
        if self._next < self._boundary < end:
            end = self._boundary
        batch = self._items[self._next:end]
        self._next += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._next


class ReplaySource(FixedPartitionedSource[SourceItem, int]):
    """One partition: the dead letters first, then the events in event-time order."""

    PART = "replay"
    BATCH_SIZE = 500

    def __init__(self, replay: ReplayInput, batch_size: int = BATCH_SIZE) -> None:
        self._replay, self._batch_size = replay, batch_size

    def list_parts(self) -> list[str]:
        return [self.PART]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ListPartition:
        items: list[SourceItem] = list(self._replay.dead_letters)
        items.extend(Sequenced(self.PART, seq, event) for seq, event in enumerate(self._replay.events))
        return _ListPartition(items, resume_state or 0, self._batch_size, len(self._replay.dead_letters))


# -- simulator ------------------------------------------------------------------------------


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


# -- Kafka ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaPosition:
    """Resume state of one topic partition: the next offset to read and the next seq."""

    offset: int
    seq: int


def consumer_config(settings: KafkaSettings) -> dict[str, str | int | float | bool]:
    """The engine's consumer settings: latency defaults, ``[kafka.client]``, fixed semantics."""
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
        **settings.client_config(),
        # Offsets live in Bytewax recovery, not in the group: never commit, never rebalance.
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
        lag = self._shared.lag(self._topic, self._partition, self._offset)
        if lag is not None:
            telemetry.metrics.consumer_lag(self._topic, self._partition, lag)

    def snapshot(self) -> KafkaPosition:
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


# -- Redis input stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPosition:
    """Resume state of a Redis stream partition: the last entry id read and the next seq."""

    last_id: str
    seq: int


class _RedisStreamPartition(StatefulSourcePartition[SourceItem, StreamPosition]):
    """Reads new entries of one stream without ever blocking the worker.

    An idle stream is polled every ``IDLE_POLL_S``; an unreachable Redis is logged once per
    outage and retried every ``RETRY_S``: the rest of the dataflow goes on meanwhile.
    """

    IDLE_POLL_S = 0.02
    RETRY_S = 1.0

    def __init__(self, client: Any, key: str, start: StreamPosition, stop: threading.Event,
                 batch_size: int, guard: WallClockGuard) -> None:
        self._client, self._key, self._stop, self._batch = client, key, stop, batch_size
        self._guard = guard
        self._part = f"redis:{key}"
        self._last, self._seq = start.last_id, start.seq
        self._cursor = f"{key}:cursor"
        self._wait = 0.0
        self._down = False

    def next_batch(self) -> list[SourceItem]:
        import redis

        if self._stop.is_set():
            raise StopIteration
        try:
            reply = self._client.xread({self._key: self._last}, count=self._batch)
        except redis.RedisError as exc:
            if not self._down:
                log.warning("input stream %s unreachable, retrying: %s", self._key, exc)
            self._down, self._wait = True, self.RETRY_S
            return []
        self._down = False
        batch: list[SourceItem] = []
        now = time.time()
        for _, entries in reply or ():
            for entry_id, fields in entries:
                entry = entry_id.decode()
                raw, origin = fields.get(b"data", b""), {"stream": self._key, "id": entry}
                limit = self._guard.bounds.dead_letter_max_payload_bytes
                result = decode(raw, origin, limit)
                if isinstance(result, DeadLetter):
                    batch.append(result)
                elif (problem := self._guard.problem(result, now)) is not None:
                    batch.append(refuse(raw, problem, origin, limit))
                else:
                    batch.append(Sequenced(self._part, self._seq, result, now, now))
                    self._seq += 1
                self._last = entry
        if batch:
            # The cursor lets a run without recovery carry on where the last one stopped.
            self._client.set(self._cursor, self._last)
        self._wait = 0.0 if batch else self.IDLE_POLL_S
        return batch

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=self._wait) if self._wait else None

    def snapshot(self) -> StreamPosition:
        return StreamPosition(self._last, self._seq)

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[SourceItem, StreamPosition]):
    """Input events from a Redis stream (entries with a ``data`` field holding one event of
    the contract, of any kind): how the dashboard's feedback reaches the engine in the
    built-in simulator mode, beside the simulator (``[redis] input_stream``).

    One partition, read from the snapshotted position with recovery; without, from the
    stream's ``:cursor`` key (where the last run stopped), else from the stream's end.
    Delivery: exactly once with recovery; without, an entry read but not yet processed when
    the process dies is lost (the cursor moved past it).
    """

    def __init__(self, url: str, key: str, stop: threading.Event | None = None,
                 batch_size: int = 500, socket_timeout_s: float = 5.0, bounds: InputBounds | None = None) -> None:
        self._url, self._key, self._stop = url, key, stop or threading.Event()
        self._batch, self._timeout = batch_size, socket_timeout_s
        self._guard = WallClockGuard(bounds or InputBounds())

    def list_parts(self) -> list[str]:
        return [f"redis:{self._key}"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: StreamPosition | None) -> _RedisStreamPartition:
        import redis

        client = redis.Redis.from_url(self._url, socket_timeout=self._timeout,
                                      socket_connect_timeout=self._timeout)
        start = resume_state
        if start is None:
            cursor: Any = client.get(f"{self._key}:cursor")
            if cursor is None:
                last: Any = client.xrevrange(self._key, count=1)
                cursor = last[0][0] if last else b"0-0"
            start = StreamPosition(bytes(cursor).decode(), 0)
        return _RedisStreamPartition(client, self._key, start, self._stop, self._batch, self._guard)
