"""Kafka sink through confluent-kafka.

Delivery: at least once. Records are produced asynchronously (no flush per record);
delivery reports are polled after every batch and failures are counted and logged with
the topic and error; ``close`` flushes what is in flight. Latency: a record is sent as soon
as it is produced (linger.ms=0: alerts are few, so there is nothing to wait for; under load
librdkafka still batches what queues up behind requests in flight) and small requests are
not held back by Nagle's algorithm. Records are keyed by customer
so one customer's alerts stay in order within a partition; consumers de-duplicate by the
record's id (``alert_id``), which is deterministic.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from sinks.base import Record, Sink

log = logging.getLogger(__name__)


def _flush_at_exit(producer: Any, topic: str) -> None:
    remaining = producer.flush(10)
    if remaining:
        log.error("%d records to %s undelivered at exit", remaining, topic)


def record_key(record: Record) -> bytes | None:
    """Partitioning key: the customer, when the record has one."""
    customer = getattr(record, "customer_id", None)
    return customer.encode() if isinstance(customer, str) else None


class KafkaSink(Sink):
    """Produce every record to ``topic``."""

    def __init__(self, client_config: dict[str, str | int | float | bool], topic: str,
                 key: Callable[[Record], bytes | None] = record_key) -> None:
        self._config: dict[str, str | int | float | bool] = {
            "linger.ms": 0, "socket.nagle.disable": True, "enable.idempotence": True, **client_config}
        self._topic = topic
        self._key = key
        self._producer: Any = None
        self.delivered = 0
        self.failed = 0

    def open(self, resume: object = None) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(self._config)
        # Bytewax does not close sinks when it is interrupted; deliver what is in flight at exit.
        weakref.finalize(self, _flush_at_exit, self._producer, self._topic)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            log.error("kafka delivery to %s failed: %s", self._topic, err)

    def write_batch(self, records: list[Record]) -> None:
        producer = self._producer
        for record in records:
            while True:
                try:
                    producer.produce(self._topic, record.to_bytes(), self._key(record),
                                     on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: wait for deliveries, never drop
                    producer.poll(0.1)
        producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(30)
            if remaining:
                log.error("%d records to %s undelivered at close", remaining, self._topic)
            self._producer = None
