"""Kafka sink through confluent-kafka.

Delivery: at least once. Records are produced asynchronously (no flush per record);
delivery reports are polled after every batch; ``close`` flushes what is in flight.
Latency: a record is sent as soon as it is produced (linger.ms=0: alerts are few, so there
is nothing to wait for; under load librdkafka still batches what queues up behind requests
in flight) and small requests are not held back by Nagle's algorithm. Records are keyed by
customer so one customer's alerts stay in order within a partition; consumers de-duplicate
by the record's id (``alert_id``), which is deterministic.

A record Kafka will not take never stops the sink: whether ``produce()`` refuses it
(``MSG_SIZE_TOO_LARGE`` above ``message.max.bytes``, an unknown partition, an invalid
argument) or its delivery report fails (the broker refused it, or librdkafka gave up after
its own retries within ``message.timeout.ms``), it goes to the sink's own dead letters (a
JSONL file, ``[kafka] sink_dead_letter_path``) as a ``DeadLetter`` holding the whole record,
the Kafka error's name and text, the topic and the record's id; it is counted as a sink
error and logged once with its id (never the record), and the sink goes on with the next
record. Only a full local queue (``BufferError``) is waited out and retried.

Metrics (a ``sinks.base.SinkReport``, given at construction): records refused or not
delivered as errors, writes retried after the local queue was full as retries, records in
flight as the buffer depth (of ``queue.buffering.max.messages``, the capacity), each
acknowledged record's time from ``produce()`` to its delivery report (librdkafka's
``Message.latency()``), reported once per poll, and records whose dead letter could not be
written as lost.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from schemas.outputs import DeadLetter
from sinks.base import Record, Sink, SinkReport, Unreported
from sinks.delivery import DeadLetterOut, kafka_refusal, record_id

log = logging.getLogger(__name__)
ID_FIELDS = ("change_id", "alert_id", "prompt_id")
_PRODUCER_ONLY = frozenset({"linger.ms", "enable.idempotence", "acks", "compression.type"})
#: librdkafka's default ``queue.buffering.max.messages``: the records a producer holds in flight.
DEFAULT_QUEUE_MESSAGES = 100_000


def _id(record: Record) -> str:
    for name in ID_FIELDS:
        value = getattr(record, name, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"{type(record).__name__} has no id field ({', '.join(ID_FIELDS)})")


def _flush_at_exit(producer: Any, topic: str) -> None:
    remaining = producer.flush(10)
    if remaining:
        log.error("%d records to %s undelivered at exit", remaining, topic)


def _log_fields(record: Record, topic: str, reason: str) -> dict[str, Any]:
    """Log fields of a refused record: the topic, the reason and, for alerts, the alert and
    event ids."""
    fields: dict[str, Any] = {"sink": "kafka", "topic": topic, "reason": reason}
    for name in ("alert_id", "event_id"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            fields[name] = value
    return fields


def record_key(record: Record) -> bytes | None:
    """Partitioning key: the customer, when the record has one."""
    customer = getattr(record, "customer_id", None)
    return customer.encode() if isinstance(customer, str) else None


class KafkaSink(Sink):
    """Produce every record to ``topic``; what Kafka refuses goes to ``dead_letters``."""

    reports_delivery = True

    def __init__(self, client_config: dict[str, str | int | float | bool], topic: str,
                 dead_letters: DeadLetterOut, key: Callable[[Record], bytes | None] = record_key,
                 metrics: SinkReport | None = None) -> None:
        self._config: dict[str, str | int | float | bool] = {
            "linger.ms": 0, "socket.nagle.disable": True, "enable.idempotence": True, **client_config}
        self._topic = topic
        self._dead = dead_letters
        self._key = key
        self._producer: Any = None
        self.delivered = 0
        self.failed = 0  # records refused by produce() or whose delivery failed: in the dead letters
        self._metrics: SinkReport = Unreported() if metrics is None else metrics
        self._latencies: list[float] = []  # of the deliveries reported since the last poll
        if metrics is not None:
            dead_letters.attach_metrics(metrics)
            metrics.buffer_capacity(int(self._config.get("queue.buffering.max.messages", DEFAULT_QUEUE_MESSAGES)))

    def open(self, resume: object = None) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(self._config)
        # Bytewax does not close sinks when it is interrupted; deliver what is in flight at exit.
        weakref.finalize(self, _flush_at_exit, self._producer, self._topic)

    def _on_delivery(self, record: Record, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
            latency = msg.latency()
            if latency is not None:
                self._latencies.append(latency)
            self._delivered(record, msg)
        else:
            self._refuse(record, msg.value() or record.to_bytes(), f"delivery failed: {kafka_refusal(err)}")

    def _delivered(self, record: Record, msg: Any) -> None:
        """A record acknowledged by the broker (for subclasses' bookkeeping)."""

    def _refuse(self, record: Record, value: bytes, why: str) -> None:
        """``record`` will never be on the topic: count it, log it once, dead-letter it whole."""
        self.failed += 1
        self._metrics.error()
        rid = record_id(record)
        reason = f"kafka topic {self._topic}: {why}"
        log.error("%s; record %s goes to the sink's dead letters", reason, rid,
                  extra=_log_fields(record, self._topic, why))
        self._dead.write([DeadLetter.of(value, reason, {"sink": "kafka", "topic": self._topic, "id": rid},
                                        max_payload_bytes=None)])

    def write_batch(self, records: list[Record]) -> None:
        from confluent_kafka import KafkaException

        producer = self._producer
        for record in records:
            value = record.to_bytes()
            while True:
                try:
                    producer.produce(self._topic, value, self._key(record),
                                     on_delivery=partial(self._on_delivery, record))
                    break
                except BufferError:  # local queue full: wait for deliveries, never drop
                    self._metrics.retry()
                    producer.poll(0.1)
                except (KafkaException, ValueError, TypeError) as exc:  # this record only
                    self._refuse(record, value, f"refused: {kafka_refusal(exc)}")
                    break
        producer.poll(0)
        self._report_deliveries()

    def _report_deliveries(self) -> None:
        """The deliveries confirmed by the last poll or flush, in one report, and the queue."""
        if self._latencies:
            latencies, self._latencies = self._latencies, []
            self._metrics.delivered(latencies)
        if self._producer is not None:
            self._metrics.buffer_depth(len(self._producer))

    def close(self) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(30)
            if remaining:
                log.error("%d records to %s undelivered at close", remaining, self._topic)
            self._report_deliveries()
            self._producer = None
        self._dead.close()


def value_id(value: bytes) -> str | None:
    """The id in a produced record's JSON value (``alert_id``, ``change_id``, ...)."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    for name in ID_FIELDS:
        if isinstance(obj.get(name), str):
            return str(obj[name])
    return None


class ResumableKafkaSink(KafkaSink):
    """A Kafka sink that, run with recovery as the topic's single writer, delivers every
    record id once to consumers across crashes and restarts.

    Delivery: each id at most once on the topic after a restart, and nothing lost.
    ``position()`` (taken at every snapshot) waits up to ``flush_timeout_s`` for the
    records in flight, then records the next offset of every partition written so far, the
    records not yet acknowledged, and the ids still to be skipped. On resume, ``open``
    reads the topic from those offsets to its end: those are the records delivered after
    the snapshot, whose ids the replay that follows will produce again; they are skipped,
    and the unacknowledged records of the snapshot are produced again unless they arrived
    after all.

    The ids to skip outlive the run that read them back: a run that resumed, skipped some
    and was killed again after its next snapshot but before the replay reached the others
    would otherwise, on the second restart, read back only from its own offsets and send
    those others a second time. So every id is dropped from the set when it is skipped,
    and the set goes into the snapshot.

    A record Kafka refuses (see the module doc) leaves the records in flight when it goes to
    the dead letters: no snapshot lists it, so no restart produces it again.
    """

    def __init__(self, client_config: dict[str, str | int | float | bool], topic: str,
                 dead_letters: DeadLetterOut, key: Callable[[Record], bytes | None] = record_key,
                 flush_timeout_s: float = 5.0, metrics: SinkReport | None = None) -> None:
        super().__init__(client_config, topic, dead_letters, key, metrics)
        self._flush_timeout_s = flush_timeout_s
        self._next: dict[int, int] = {}  # partition -> next offset after our acknowledged writes
        self._in_flight: dict[str, Record] = {}
        self._seen: set[str] = set()  # ids already on the topic after the resumed snapshot
        self.skipped = 0

    def open(self, resume: object = None) -> None:
        super().open()
        highs = self._high_watermarks()
        if isinstance(resume, dict):
            start = {p: resume["offsets"].get(p, 0) for p in highs}
            self._seen = self._ids_between(start, highs) | set(resume.get("skip", ()))
            self._next = dict(highs)
            pending = [r for r in resume["pending"] if _id(r) not in self._seen]
            # Produced before the snapshot, so the replay will not produce them again.
            self._seen.difference_update(_id(r) for r in resume["pending"])
            # In flight again until acknowledged, so the next snapshot keeps what is not.
            self._in_flight.update((_id(r), r) for r in pending)
            if pending:
                super().write_batch(pending)
        else:
            self._next = dict(highs)

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        config = {k: v for k, v in self._config.items() if k not in _PRODUCER_ONLY}
        return Consumer({**config, "group.id": f"resume-{self._topic}", "enable.auto.commit": False,
                         "enable.partition.eof": True})

    def _high_watermarks(self) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        consumer = self._consumer()
        try:
            meta = consumer.list_topics(self._topic, timeout=15)
            topic = meta.topics.get(self._topic)
            if topic is None or topic.error is not None:
                raise RuntimeError(f"Kafka topic {self._topic!r} is not available")
            return {p: consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=15)[1]
                    for p in topic.partitions}
        finally:
            consumer.close()

    def _ids_between(self, start: dict[int, int], end: dict[int, int]) -> set[str]:
        from confluent_kafka import TopicPartition

        todo = {p: (s, end[p]) for p, s in start.items() if s < end[p]}
        seen: set[str] = set()
        if not todo:
            return seen
        consumer = self._consumer()
        try:
            consumer.assign([TopicPartition(self._topic, p, s) for p, (s, _) in todo.items()])
            remaining = set(todo)
            deadline = time.monotonic() + 60
            while remaining and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is not None:
                        continue
                    if msg.offset() >= todo[msg.partition()][1] - 1:
                        remaining.discard(msg.partition())
                    rid = value_id(msg.value())
                    if rid is not None:
                        seen.add(rid)
            if remaining:
                raise RuntimeError(f"could not read back {self._topic} partitions {sorted(remaining)}")
        finally:
            consumer.close()
        log.info("%s: %d records were delivered after the snapshot; their replay is skipped",
                 self._topic, len(seen))
        return seen

    def _delivered(self, record: Record, msg: Any) -> None:
        self._next[msg.partition()] = max(self._next.get(msg.partition(), 0), msg.offset() + 1)
        self._in_flight.pop(_id(record), None)

    def _refuse(self, record: Record, value: bytes, why: str) -> None:
        self._in_flight.pop(_id(record), None)  # in the dead letters: never to be produced again
        super()._refuse(record, value, why)

    def write_batch(self, records: list[Record]) -> None:
        fresh = []
        for record in records:
            rid = _id(record)
            if rid in self._seen:
                self._seen.discard(rid)  # the replay produces each id once
                self.skipped += 1
                continue
            self._in_flight[rid] = record
            fresh.append(record)
        super().write_batch(fresh)

    def position(self) -> dict[str, Any]:
        if self._producer is not None:
            self._producer.flush(self._flush_timeout_s)
        return {"offsets": dict(self._next), "pending": list(self._in_flight.values()),
                "skip": sorted(self._seen)}
